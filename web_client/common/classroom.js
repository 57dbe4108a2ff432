// One participant in a lesson, for the consoles: the signalling socket, the subscribe and
// publish PeerConnections, the classroom state (phase, hands, call-on, mute, attendance,
// chat; protocol §6) and per-track quality. Reconnects by itself unless the server said
// the link cannot work (bad token, ended lesson); published sources are published again.
//
// Events (EventTarget):
//   "joined"   detail: the `joined` message
//   "state"    detail: {state, event}   the latest classroom state and what changed
//   "chat"     detail: chat message     (history arrives as one "history" event)
//   "history"  detail: [chat messages]
//   "tracks"   detail: Map mid -> {info, track}
//   "quality"  detail: Map mid -> stats (stats.js) plus `frozen`
//   "status"   detail: "connecting" | "joined" | "reconnecting" | "failed"
//   "failed"   detail: {code, message}

import { Backoff } from "./backoff.js";
import { PublishSession } from "./publisher.js";
import { FATAL_CODES, SignallingClient, SignallingError, signallingUrl } from "./signalling.js";
import { StatsSampler } from "./stats.js";
import { SubscribeSession } from "./subscriber.js";

const STATS_INTERVAL_MS = 1000;
const CLOSE_CODES = { 4401: "token_invalid", 4403: "token_wrong_room", 4404: "unknown_room",
  4409: "replaced", 4410: "lesson_ended" };

export class ClassroomConnection extends EventTarget {
  constructor({ room, token, name = "" }) {
    super();
    this.room = room;
    this.token = token;
    this.name = name;
    this.backoff = new Backoff();
    this.sig = null;
    this.sub = null;
    this.pub = null;
    this.sampler = null;
    this.joined = null;
    this.state = null;
    this.tracks = new Map();
    this.quality = new Map();
    this.published = new Map(); // source -> {track, label}: what to publish again
    this.failed = null;
    this.leaving = false;
    this._frames = new Map(); // mid -> [framesDecoded, unchanged samples]
    this._statsTimer = null;
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  async connect() {
    this._teardown();
    this._emit("status", "connecting");
    const sig = new SignallingClient(signallingUrl());
    this.sig = sig;
    sig.addEventListener("message", (e) => {
      if (sig === this.sig) this._onMessage(e.detail);
    });
    sig.addEventListener("close", (e) => this._onClose(sig, e.detail));
    try {
      await sig.open();
    } catch {
      return;
    }
    const sub = new SubscribeSession({ send: (m) => sig.send(m) });
    this.sub = sub;
    this.sampler = new StatsSampler(sub.pc);
    sub.addEventListener("tracks", (e) => {
      this.tracks = e.detail;
      this._emit("tracks", e.detail);
    });
    sub.addEventListener("connection", (e) => {
      if (e.detail === "failed" && sig === this.sig) sig.close(4000, "media failed");
    });
    this._statsTimer = setInterval(() => this._sample(), STATS_INTERVAL_MS);
    let joined;
    try {
      joined = await sig.join(this.room, this.token, this.name);
    } catch (err) {
      if (err instanceof SignallingError && FATAL_CODES.has(err.code)) {
        this._fail(err.code, err.serverMessage);
        sig.close();
      }
      return;
    }
    if (sig !== this.sig) return;
    this.backoff.reset();
    this.joined = joined;
    this._emit("joined", joined);
    this._emit("status", "joined");
    this.pub = new PublishSession({
      request: (m) => sig.request(m),
      videoCodec: () => this.state?.program_codec || null,
    });
    for (const [source, { track, label }] of this.published) {
      if (track.readyState === "live") {
        this.pub.set(source, track, label).catch((err) => console.warn("republish", err));
      }
    }
  }

  /** Send one classroom action; resolves with the reply, rejects with a SignallingError. */
  action(type, fields = {}) {
    if (!this.sig || !this.joined) {
      return Promise.reject(new SignallingError("not_joined", "not in the lesson"));
    }
    return this.sig.request({ type, ...fields });
  }

  async publish(source, track, label = "") {
    this.published.set(source, { track, label });
    if (this.pub) await this.pub.set(source, track, label);
  }

  async unpublish(source) {
    this.published.delete(source);
    if (this.pub) await this.pub.remove(source);
  }

  _onMessage(message) {
    switch (message.type) {
      case "subscribe_offer":
        this.sub.handleOffer(message).catch((err) => {
          console.error("subscribe_offer failed", err);
          this.sig.close(4000, "bad offer");
        });
        break;
      case "tracks":
        this.sub.handleTracks(message);
        break;
      case "classroom":
        this.state = message.state;
        if (message.state.chat) this._emit("history", message.state.chat);
        this._emit("state", { state: message.state, event: message.event });
        break;
      case "chat":
        this._emit("chat", message.message);
        break;
      case "agent_state":
        this._emit("device", { classroom: message.classroom, state: message.state });
        break;
      case "error":
        if (FATAL_CODES.has(message.code)) this._fail(message.code, message.message);
        break;
      default:
        break;
    }
  }

  async _sample() {
    if (!this.sampler) return;
    let stats;
    try {
      stats = await this.sampler.sample();
    } catch {
      return;
    }
    for (const [mid, st] of stats) {
      // Frozen: a video track that decoded no new frame for two seconds.
      const [last, still] = this._frames.get(mid) || [-1, 0];
      const unchanged = st.kind === "video" && st.framesDecoded === last ? still + 1 : 0;
      this._frames.set(mid, [st.framesDecoded, unchanged]);
      st.frozen = unchanged >= 2;
    }
    this.quality = stats;
    this._emit("quality", stats);
  }

  _onClose(sig, { code, error }) {
    if (sig !== this.sig || this.leaving || this.failed) return;
    const fatal = (error && FATAL_CODES.has(error.code) && error.code) || CLOSE_CODES[code];
    if (fatal) {
      this._fail(fatal, error ? error.message : "");
      return;
    }
    this._emit("status", "reconnecting");
    setTimeout(() => this.connect(), this.backoff.next());
  }

  _fail(code, message) {
    if (this.failed) return;
    this.failed = { code, message };
    this._emit("failed", this.failed);
    this._emit("status", "failed");
  }

  _teardown() {
    clearInterval(this._statsTimer);
    if (this.sub) this.sub.close();
    if (this.pub) this.pub.pc.close();
    this.sub = this.pub = this.sampler = null;
    this.joined = null;
  }

  close() {
    this.leaving = true;
    if (this.sig) this.sig.close();
    this._teardown();
    for (const { track } of this.published.values()) track.stop();
  }
}
