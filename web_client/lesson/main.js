// The lesson viewer: join with the token from the link, answer the server's subscribe
// offers, show every published source, and keep coming back when the network drops.
// It only watches, whatever the token's role: publishing lives in the master console.

import { Backoff } from "../common/backoff.js";
import {
  FATAL_CLOSE_CODES,
  FATAL_CODES,
  SignallingClient,
  SignallingError,
  signallingUrl,
} from "../common/signalling.js";
import { StatsSampler } from "../common/stats.js";
import { SubscribeSession } from "../common/subscriber.js";
import {
  PHASES,
  RETRYABLE_ERRORS,
  STEPS,
  TEXT,
  errorText,
  liveText,
  reconnectText,
} from "./i18n.js";
import { TileGrid } from "./tiles.js";

const STATS_INTERVAL_MS = 1000;
// No packet on any running track for this long while live: the media path is dead.
const MEDIA_STALL_MS = 5000;
const CLOSE_CODE_ERRORS = {
  4401: "token_invalid",
  4403: "token_wrong_room",
  4404: "unknown_room",
  4409: "replaced",
};

function lessonFromLocation(loc = window.location) {
  const match = loc.pathname.match(/\/lesson\/([^/]+)\/?$/);
  const query = new URLSearchParams(loc.search);
  return {
    room: match ? decodeURIComponent(match[1]) : "",
    code: query.get("code") || "",
    token: query.get("token") || "",
  };
}

// The link's one-time code (or an old link's token) must not stay in the address bar,
// the history or a bookmark: drop it before anything else happens.
function forgetCredentialsInAddress(loc = window.location) {
  const query = new URLSearchParams(loc.search);
  if (!query.has("code") && !query.has("token")) return;
  query.delete("code");
  query.delete("token");
  const rest = query.toString();
  history.replaceState(history.state, "", loc.pathname + (rest ? `?${rest}` : "") + loc.hash);
}

// Trade the link's code for the room token. Without a code (a reload), the server
// answers from this browser's HttpOnly lesson cookie, set by the first exchange.
async function exchangeCode(room, code) {
  const body = code ? { room, code } : { room };
  const resp = await fetch("/api/lesson/exchange", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    credentials: "same-origin",
    body: JSON.stringify(body),
  });
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const err = data.error || {};
    throw new SignallingError(err.code || "token_missing", err.message || "");
  }
  return data.token;
}

class LessonViewer {
  constructor(dom) {
    this.dom = dom;
    const { room, code, token } = lessonFromLocation();
    forgetCredentialsInAddress();
    this.room = room;
    this.code = code;
    // Kept in memory only; a reload asks the server again (see exchangeCode).
    this.token = token;
    this.backoff = new Backoff();
    this.grid = new TileGrid(dom.grid, {
      onAutoplayBlocked: (media) => this._autoplayBlocked(media),
    });
    this.sig = null;
    this.sub = null;
    this.sampler = null;
    this.participants = new Map();
    this.failed = null;
    this.leaving = false;
    this._reconnectTimer = null;
    this._countdown = null;
    this._statsTimer = null;
    this._blockedMedia = new Set();
    // The state tests and operators can read from the console.
    this.state = {
      phase: "connecting",
      room,
      joined: null,
      tracks: {},
      stats: {},
      inbound: {},
      participants: [],
      error: null,
      connects: 0,
      pc: null,
      signalling: null,
      negotiations: 0,
      inboundStats: () => (this.sampler ? this.sampler.inbound() : Promise.resolve({})),
      reconnectNow: () => this.reconnectNow(),
    };
    window.tongke = this.state;
    dom.roomId.textContent = room;
    dom.reconnectNow.textContent = TEXT.reconnectNow;
    dom.reconnectNow.addEventListener("click", () => this.reconnectNow());
    dom.retry.textContent = TEXT.retry;
    dom.retry.addEventListener("click", () => this.reconnectNow());
    dom.sound.textContent = TEXT.enableSound;
    dom.sound.addEventListener("click", () => this._enableSound());
    dom.empty.textContent = TEXT.noSources;
    window.addEventListener("pagehide", () => {
      this.leaving = true;
      this.sig?.close();
    });
  }

  async start() {
    if (!this.room) {
      this._fail("unknown_room", "");
      return;
    }
    if (!this.token) {
      try {
        this.token = await exchangeCode(this.room, this.code);
      } catch (err) {
        const code = err instanceof SignallingError ? err.code : "token_missing";
        this._fail(code, err.serverMessage || "");
        return;
      }
      this.code = "";
    }
    this.connect();
  }

  async connect() {
    this._teardown();
    this.state.connects += 1;
    this._setPhase("connecting");
    const sig = new SignallingClient(signallingUrl());
    this.sig = sig;
    this.state.signalling = sig;
    // A superseded socket may still deliver frames while it closes: they are not ours.
    sig.addEventListener("message", (e) => {
      if (sig === this.sig) this._onMessage(e.detail);
    });
    sig.addEventListener("close", (e) => this._onClose(sig, e.detail));
    try {
      await sig.open();
    } catch {
      return; // The close handler schedules the next attempt.
    }
    this._setPhase("joining");
    // Created before `join` so that the first subscribe_offer always finds it.
    this._startSubscriber(sig);
    let joined;
    try {
      joined = await sig.join(this.room, this.token);
    } catch (err) {
      if (err instanceof SignallingError && FATAL_CODES.has(err.code)) {
        this._fail(err.code, err.serverMessage);
        sig.close();
      } else if (err instanceof SignallingError && err.code === "rate_limited") {
        sig.close(); // the close handler retries after its back-off
      }
      return; // Otherwise the socket is gone and the close handler reconnects.
    }
    if (sig !== this.sig) return;
    // TURN servers with time-limited credentials (protocol: joined.ice_servers), so a
    // school whose firewall drops UDP still receives the lesson over TCP/TLS. Set before
    // the first subscribe_offer is answered: that message is handled after this task.
    if (joined.ice_servers?.length && this.sub) {
      this.sub.pc.setConfiguration({ ...this.sub.pc.getConfiguration(), iceServers: joined.ice_servers });
    }
    this.state.joined = joined;
    this.participants = new Map(joined.participants.map((p) => [p.id, p]));
    this._renderHeader();
    this._setPhase("media");
  }

  _startSubscriber(sig) {
    const sub = new SubscribeSession({ send: (m) => sig.send(m) });
    this.sub = sub;
    this.sampler = new StatsSampler(sub.pc);
    this.state.pc = sub.pc;
    sub.addEventListener("tracks", (e) => this._onTracks(e.detail));
    sub.addEventListener("connection", (e) => this._onMediaState(sig, e.detail));
    this._statsTimer = setInterval(() => this._sampleStats(), STATS_INTERVAL_MS);
  }

  _onMessage(message) {
    switch (message.type) {
      case "subscribe_offer":
        this.sub.handleOffer(message).then(
          () => {
            this.state.negotiations = this.sub.negotiations;
          },
          (err) => {
            // An offer we cannot apply leaves media broken: start over on a new session.
            console.error("subscribe_offer failed", err);
            this.sig.close(4000, "bad offer");
          },
        );
        break;
      case "tracks":
        this.sub.handleTracks(message);
        break;
      case "allocation":
        this.grid.setAllocation(message);
        this.state.allocation = message;
        break;
      case "participant_joined":
      case "participant_updated":
        this.participants.set(message.participant.id, message.participant);
        this._renderHeader();
        break;
      case "participant_left":
        this.participants.delete(message.participant);
        this._renderHeader();
        break;
      case "error":
        if (FATAL_CODES.has(message.code)) this._fail(message.code, message.message);
        else console.warn("server error", message.code, message.message);
        break;
      default:
        break;
    }
  }

  _onTracks(tracks) {
    this.grid.update(tracks);
    this.state.tracks = Object.fromEntries([...tracks].map(([mid, { info }]) => [mid, info]));
    this._updateLivePhase();
  }

  _onMediaState(sig, state) {
    if (sig !== this.sig) return;
    if (state === "failed") {
      // The server has no ICE restart: a new session is the way back.
      sig.close(4000, "media failed");
      return;
    }
    this._updateLivePhase();
  }

  _updateLivePhase() {
    if (!this.state.joined || this.failed) return;
    const media = this.sub ? this.sub.pc.connectionState : "new";
    if (this.grid.tiles.size === 0) {
      this._setPhase("waiting");
      this.backoff.reset();
    } else if (media === "connected") {
      this._setPhase("live");
      this.backoff.reset();
    } else if (media === "disconnected") {
      this._setPhase("unstable");
    } else {
      this._setPhase("media");
    }
  }

  _onClose(sig, { code, error }) {
    if (sig !== this.sig) return;
    this._teardown();
    if (this.failed || this.leaving) return;
    const errorCode = error?.code;
    if ((errorCode && FATAL_CODES.has(errorCode)) || FATAL_CLOSE_CODES.has(code)) {
      this._fail(errorCode || CLOSE_CODE_ERRORS[code], error?.message || "");
      return;
    }
    this._scheduleReconnect();
  }

  _scheduleReconnect() {
    const delay = this.backoff.next();
    const attempt = this.backoff.attempt;
    const due = Date.now() + delay;
    this._setPhase("reconnecting");
    const tick = () => {
      const seconds = Math.max(0, Math.ceil((due - Date.now()) / 1000));
      this.dom.statusText.textContent = reconnectText(seconds, attempt);
    };
    tick();
    this._countdown = setInterval(tick, 1000);
    this._reconnectTimer = setTimeout(() => this.connect(), delay);
  }

  reconnectNow() {
    this.failed = null;
    this.state.error = null;
    this.dom.errorBox.hidden = true;
    this.connect();
  }

  _teardown() {
    clearTimeout(this._reconnectTimer);
    clearInterval(this._countdown);
    clearInterval(this._statsTimer);
    this._reconnectTimer = this._countdown = this._statsTimer = null;
    if (this.sub) this.sub.close();
    this.sub = null;
    this.sampler = null;
    this.state.pc = null;
    this.state.joined = null;
    this.grid.clear();
    this.state.tracks = {};
    this.state.stats = {};
    this.state.inbound = {};
    this.participants.clear();
    this._renderHeader();
    this._blockedMedia.clear();
    this.dom.sound.hidden = true;
    const sig = this.sig;
    if (sig && !sig.closed) {
      this.sig = null; // Its close event must not schedule another attempt.
      sig.close();
    }
  }

  _fail(code, serverMessage) {
    const text = errorText(code, serverMessage);
    this.failed = text;
    this.state.error = { code, message: serverMessage || text.detail };
    this.dom.errorTitle.textContent = text.title;
    this.dom.errorDetail.textContent = text.detail;
    this.dom.errorCode.textContent = code ? `(${code})` : "";
    this.dom.retry.hidden = !RETRYABLE_ERRORS.has(code);
    this.dom.errorBox.hidden = false;
    this._setPhase("error");
    this._teardown();
  }

  async _sampleStats() {
    const sampler = this.sampler;
    if (!sampler) return;
    let stats;
    try {
      stats = await sampler.sample();
    } catch {
      return; // The PeerConnection closed under us; the next session samples anew.
    }
    if (sampler !== this.sampler) return;
    this._watchMedia(stats);
    this.grid.setStats(stats);
    this.state.stats = Object.fromEntries(stats);
    this.state.inbound = sampler.lastInbound;
  }

  /**
   * A media path can die without any event (a NAT rebinding, a firewall state timeout):
   * when nothing the server is sending arrives for MEDIA_STALL_MS, start a new session.
   * The server's sender reports keep coming while a publisher is merely quiet (a point
   * whose own uplink dropped), so a connection that still receives them is alive.
   */
  _watchMedia(stats) {
    let packets = this.sampler ? this.sampler.transportBytes : 0;
    let expected = false;
    for (const [mid, st] of stats) {
      const tile = this.grid.tiles.get(mid);
      if (!tile || (tile.allocation && tile.allocation.paused)) continue;
      expected = true;
      packets += st.packetsReceived || 0;
    }
    const now = Date.now();
    if (!expected || packets !== this._mediaPackets) {
      this._mediaPackets = packets;
      this._mediaAt = now;
      return;
    }
    if (this.state.phase === "live" && now - this._mediaAt > MEDIA_STALL_MS && this.sig) {
      console.warn("no media for", now - this._mediaAt, "ms: rejoining");
      this.state.stalls = (this.state.stalls || 0) + 1;
      this.sig.close(4000, "media stalled");
    }
  }

  _setPhase(phase) {
    this.state.phase = phase;
    document.body.dataset.phase = phase;
    const { dom } = this;
    if (phase === "live") {
      const { video, audio } = this.grid.counts();
      dom.statusText.textContent = liveText(video, audio);
    } else {
      dom.statusText.textContent = PHASES[phase];
    }
    const busy = !["live", "waiting", "error"].includes(phase);
    dom.spinner.hidden = !busy;
    dom.status.setAttribute("aria-busy", String(busy));
    dom.reconnectNow.hidden = phase !== "reconnecting";
    dom.empty.hidden = phase !== "waiting";
    // Progress steps: everything before the current step is done.
    const stepPhase = { waiting: "live", unstable: "media", reconnecting: "connecting" }[phase] || phase;
    const current = STEPS.findIndex(([p]) => p === stepPhase);
    dom.steps.hidden = phase === "error";
    for (const [i, li] of [...dom.steps.children].entries()) {
      li.classList.toggle("done", current >= 0 && i < current);
      li.classList.toggle("current", i === current);
      if (i === current) li.setAttribute("aria-current", "step");
      else li.removeAttribute("aria-current");
    }
  }

  _renderHeader() {
    const joined = this.state.joined;
    const { dom } = this;
    dom.title.textContent = joined?.title || this.room || "";
    // The room id only adds something when the lesson has a real title.
    dom.roomId.hidden = !joined?.title || joined.title === this.room;
    document.title = `${joined?.title || this.room} · 同课 Tongke`;
    if (joined) {
      dom.role.textContent = `${joined.role} · ${TEXT.viewOnly}`;
      dom.role.hidden = false;
    } else {
      dom.role.hidden = true;
    }
    const others = [...this.participants.values()].filter((p) => p.id !== joined?.participant);
    this.state.participants = others;
    dom.participants.textContent = others.length
      ? `${TEXT.participants}: ${others.map((p) => p.name || p.classroom).join("、")}`
      : "";
  }

  _autoplayBlocked(media) {
    // Browsers refuse sound until the user interacts with the page once.
    this._blockedMedia.add(media);
    this.dom.sound.hidden = false;
  }

  _enableSound() {
    for (const media of this._blockedMedia) media.play().catch(() => {});
    this._blockedMedia.clear();
    this.dom.sound.hidden = true;
  }
}

function buildSteps(list) {
  for (const [phase, label] of STEPS) {
    const li = document.createElement("li");
    li.dataset.phase = phase;
    li.textContent = label;
    list.append(li);
  }
}

const $ = (id) => document.getElementById(id);
const dom = {
  title: $("lesson-title"),
  roomId: $("room-id"),
  role: $("role"),
  participants: $("participants"),
  status: $("status"),
  statusText: $("status-text"),
  spinner: $("spinner"),
  steps: $("steps"),
  reconnectNow: $("reconnect-now"),
  sound: $("enable-sound"),
  errorBox: $("error"),
  errorTitle: $("error-title"),
  errorDetail: $("error-detail"),
  errorCode: $("error-code"),
  retry: $("retry"),
  grid: $("grid"),
  empty: $("empty"),
};
buildSteps(dom.steps);
new LessonViewer(dom).start();
