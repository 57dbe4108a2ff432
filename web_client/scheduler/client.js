// Calls to /api/schedule with the scheduler's token; errors carry the server's message.
function token() {
  return localStorage.getItem("tongke.scheduler.token") || "";
}

export async function api(method, path, body) {
  // FormData goes as multipart (files keep their bytes: GBK files are decoded by the server).
  const form = body instanceof FormData;
  const headers = { Authorization: `Bearer ${token()}` };
  if (!form) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : form ? body : JSON.stringify(body),
  });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) {
    const err = new Error(data.error ? data.error.message : `HTTP ${res.status}`);
    err.code = data.error && data.error.code;
    err.rows = data.error && data.error.rows;
    err.encodings = data.error && data.error.encodings;
    throw err;
  }
  return data;
}

export async function download(path, filename) {
  const res = await fetch(path, { headers: { Authorization: `Bearer ${token()}` } });
  if (!res.ok) throw new Error(`export failed (HTTP ${res.status})`);
  saveBlob(await res.blob(), filename);
}

export function saveBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  URL.revokeObjectURL(url);
}
