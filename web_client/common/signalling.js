// The Tongke signalling socket (docs/protocol.md §3): one WebSocket, JSON text frames,
// `join` first, request/reply matched by `id`. Shared by the lesson viewer and any later
// page (the master console) that speaks the same protocol.

// Join failures after which the server closes the socket: retrying with the same link
// cannot succeed, so callers must not reconnect on these.
export const FATAL_CODES = new Set([
  "token_missing",
  "token_invalid",
  "token_expired",
  "token_wrong_room",
  "token_role",
  "unknown_room",
  "forbidden",
  "replaced",
  "lesson_ended",
]);

// WebSocket close codes the server uses for refused joins (protocol §3.3).
export const FATAL_CLOSE_CODES = new Set([4401, 4403, 4404, 4409, 4410]);

export class SignallingError extends Error {
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.code = code;
    this.serverMessage = message;
  }
}

export function signallingUrl(loc = window.location) {
  const scheme = loc.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${loc.host}/ws`;
}

/**
 * One signalling connection. Events (EventTarget):
 *   "message" detail: every server message that is not a reply to a request
 *   "close"   detail: {code, reason, error} once the socket is gone; `error` is the last
 *             unsolicited server `error` (e.g. the refused join) if there was one
 */
export class SignallingClient extends EventTarget {
  constructor(url, { requestTimeoutMs = 15000, pingIntervalMs = 15000 } = {}) {
    super();
    this.url = url;
    this.requestTimeoutMs = requestTimeoutMs;
    this.pingIntervalMs = pingIntervalMs;
    this.ws = null;
    this.closed = false;
    this.lastError = null;
    this._nextId = 1;
    this._pending = new Map();
    this._pingTimer = null;
    this._awaitingPong = false;
  }

  /** Open the socket; resolves once it is open, rejects if it cannot be opened. */
  open() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url);
      this.ws = ws;
      let opened = false;
      ws.onopen = () => {
        opened = true;
        this._startPing();
        resolve();
      };
      ws.onmessage = (event) => this._onFrame(event.data);
      ws.onclose = (event) => {
        this._finish(event.code, event.reason);
        if (!opened) reject(new Error(`cannot reach the server (close ${event.code})`));
      };
      // onerror is always followed by onclose, which does the cleanup.
      ws.onerror = () => {};
    });
  }

  async join(room, token, name) {
    const message = { type: "join", room, token };
    if (name) message.name = name;
    return this.request(message);
  }

  send(message) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
      throw new Error("the signalling socket is not open");
    }
    this.ws.send(JSON.stringify(message));
  }

  /** Send a request with an `id`; resolve with the reply, reject on `error` or close. */
  request(message) {
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new SignallingError("timeout", `no reply to ${message.type}`));
      }, this.requestTimeoutMs);
      this._pending.set(id, { resolve, reject, timer });
      try {
        this.send({ ...message, id });
      } catch (err) {
        clearTimeout(timer);
        this._pending.delete(id);
        reject(err);
      }
    });
  }

  close(code = 1000, reason = "bye") {
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) {
      try {
        if (this.ws.readyState === WebSocket.OPEN) this.send({ type: "leave" });
      } catch {
        // Already closing: nothing left to tell the server.
      }
      this.ws.close(code, reason);
    }
  }

  _onFrame(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return; // The server only sends JSON; a garbled frame is not worth dying for.
    }
    if (message.type === "pong") {
      this._awaitingPong = false;
      return;
    }
    if (message.type === "error") this.lastError = message;
    const pending = message.id != null ? this._pending.get(message.id) : undefined;
    if (pending) {
      this._pending.delete(message.id);
      clearTimeout(pending.timer);
      if (message.type === "error") {
        pending.reject(new SignallingError(message.code, message.message));
      } else {
        pending.resolve(message);
      }
      return;
    }
    this.dispatchEvent(new CustomEvent("message", { detail: message }));
  }

  // The server pings at the WebSocket level, but a browser cannot see those: an
  // application ping finds a dead path (laptop sleep, NAT timeout) within ~2 intervals.
  _startPing() {
    this._pingTimer = setInterval(() => {
      if (this._awaitingPong) {
        this.ws.close(4000, "no pong");
        return;
      }
      this._awaitingPong = true;
      try {
        this.send({ type: "ping" });
      } catch {
        // The close handler deals with it.
      }
    }, this.pingIntervalMs);
  }

  _finish(code, reason) {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this._pingTimer);
    const error = this.lastError;
    for (const { reject, timer } of this._pending.values()) {
      clearTimeout(timer);
      reject(
        error
          ? new SignallingError(error.code, error.message)
          : new SignallingError("closed", `the connection closed (${code})`),
      );
    }
    this._pending.clear();
    this.dispatchEvent(new CustomEvent("close", { detail: { code, reason, error } }));
  }
}
