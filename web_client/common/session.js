// The signed-in person's session (tongke/session_auth.py): who I am, the CSRF token that
// every state-changing request carries, and room tokens minted from the session.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let cached = null;

export async function me({ fresh = false } = {}) {
  if (cached && !fresh) return cached;
  const resp = await fetch("/api/auth/me", { credentials: "same-origin", cache: "no-store" });
  if (resp.status === 401) return null;
  const body = await resp.json();
  if (!resp.ok) throw new ApiError(resp.status, body.error?.code, body.error?.message);
  cached = body;
  return body;
}

export function loginUrl(next = window.location.pathname + window.location.search) {
  return `/login?next=${encodeURIComponent(next)}`;
}

/** JSON API call with the session cookie and CSRF token; throws ApiError. */
export async function api(method, path, body, { raw = false } = {}) {
  const headers = {};
  if (method !== "GET") {
    const m = await me();
    if (m) headers["X-CSRF-Token"] = m.csrf;
  }
  let payload;
  if (body !== undefined) {
    headers["Content-Type"] = raw ? "text/csv" : "application/json";
    payload = raw ? body : JSON.stringify(body);
  }
  const resp = await fetch(path, { method, headers, body: payload, credentials: "same-origin" });
  let data = null;
  try {
    data = await resp.json();
  } catch {
    data = null;
  }
  if (!resp.ok) {
    throw new ApiError(resp.status, data?.error?.code || "http", data?.error?.message || resp.statusText);
  }
  return data;
}

/**
 * A room token for `room` from the session; sends the person to sign in when needed.
 * `as: "tutor"` asks for the tutor role (a point's own teacher: controls, no camera).
 */
export async function roomToken(room, { as = null } = {}) {
  const who = await me();
  if (!who) {
    window.location.href = loginUrl();
    return null;
  }
  const reply = await api("POST", "/api/auth/room-token", as ? { room, as } : { room });
  return reply.token;
}
