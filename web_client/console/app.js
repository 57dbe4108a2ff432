// The master teacher's console: every teaching point on a grid with its quality and hand,
// one click to call on, release or mute, the hand queue, chat, start and end, attendance,
// and publishing the teacher's camera, microphone and courseware from the browser.

import { renderChatLog, sendChatInput } from "../common/chat.js";
import { ClassroomConnection } from "../common/classroom.js";
import { applyPage, clock, duration, translator } from "../common/i18n.js";
import {
  attach,
  audioElement,
  errorReason,
  openCamera,
  openScreen,
  videoElement,
  videoTile,
} from "../common/media.js";
import { deviceText } from "../common/device.js";
import { roomToken } from "../common/session.js";
import { STRINGS } from "./i18n.js";

const t = translator(STRINGS);
const $ = (id) => document.getElementById(id);

function fromLocation(loc = window.location) {
  const match = loc.pathname.match(/\/console\/([^/]+)\/?$/);
  const q = new URLSearchParams(loc.search);
  return { room: match ? decodeURIComponent(match[1]) : "", token: q.get("token") || "" };
}

class MasterConsole {
  constructor() {
    const { room, token } = fromLocation();
    this.conn = new ClassroomConnection({ room, token });
    this.state = null;
    this.tracks = new Map();
    this.quality = new Map();
    this.tiles = new Map(); // key -> tile record
    this.chat = [];
    this.devices = {}; // classroom -> its device's latest report (agent_state)
    this.camera = null; // MediaStream from getUserMedia
    this.screen = null;
    window.tongke = {
      conn: this.conn,
      console: this,
      chat: this.chat,
      errors: [],
      get state() {
        return this.console.state;
      },
    };
  }

  async start() {
    applyPage(t);
    $("start").onclick = () => this.act("lesson_start");
    $("end").onclick = () => {
      if (window.confirm(t("confirmEnd"))) this.act("lesson_end");
    };
    $("camera").onclick = () => this.toggleCamera();
    $("director-auto").onclick = () => this.act("director", { mode: "auto" });
    $("share").onclick = () => this.toggleShare();
    $("chat-form").onsubmit = (e) => {
      e.preventDefault();
      this.sendChat();
    };
    const c = this.conn;
    c.addEventListener("status", (e) => this.showStatus(e.detail));
    c.addEventListener("failed", (e) => this.showFailure(e.detail));
    c.addEventListener("joined", (e) => {
      // The program monitor: this console receives the director's program too.
      this.act("watch_program", { on: true });
      $("title").textContent = e.detail.title || e.detail.room;
      document.title = `同课 · ${e.detail.title || e.detail.room}`;
    });
    c.addEventListener("state", (e) => {
      this.state = e.detail.state;
      if (this.state.devices) this.devices = { ...this.state.devices };
      this.render();
    });
    c.addEventListener("device", (e) => {
      this.devices[e.detail.classroom] = e.detail.state;
      this.renderDevices();
    });
    c.addEventListener("history", (e) => {
      this.chat.splice(0, this.chat.length, ...e.detail);
      this.renderChat();
    });
    c.addEventListener("chat", (e) => {
      this.chat.push(e.detail);
      this.renderChat();
    });
    c.addEventListener("tracks", (e) => {
      this.tracks = e.detail;
      this.renderMedia();
    });
    c.addEventListener("quality", (e) => {
      this.quality = e.detail;
      this.renderQuality();
    });
    window.addEventListener("pagehide", () => c.close());
    if (!c.room) {
      this.showFailure({ code: "unknown_room", message: "" });
      return;
    }
    if (!c.token) {
      // Signed-in teachers get their token from the session (or are sent to sign in).
      try {
        c.token = await roomToken(c.room);
      } catch (err) {
        this.showFailure({ code: err.code, message: err.message });
        return;
      }
      if (!c.token) return;
    }
    c.connect();
  }

  async act(type, fields = {}) {
    try {
      return await this.conn.action(type, fields);
    } catch (err) {
      window.tongke.errors.push({ type, code: err.code, message: err.serverMessage });
      this.notice(this.errorText(err.code, err.serverMessage), true);
      return null;
    }
  }

  errorText(code, message) {
    const key = `err_${code}`;
    return STRINGS.zh[key] ? t(key, { message }) : t("err_generic", { code, message });
  }

  notice(text, bad = false) {
    const n = $("notice");
    n.textContent = text;
    n.classList.toggle("bad", bad);
    n.hidden = !text;
  }

  showStatus(status) {
    if (status === "connecting") this.notice(t("connecting"));
    else if (status === "reconnecting") this.notice(t("reconnecting"), true);
    else if (status === "joined") this.notice("");
  }

  showFailure({ code, message }) {
    this.notice(t("failed", { message: this.errorText(code, message) }), true);
    for (const id of ["start", "end", "camera", "share"]) $(id).disabled = true;
  }

  // -- publishing ----------------------------------------------------------------------

  async toggleCamera() {
    $("publish-error").textContent = "";
    if (this.camera) {
      await this.conn.unpublish("teacher_camera").catch(() => {});
      await this.conn.unpublish("classroom_mic").catch(() => {});
      this.camera = null;
    } else {
      try {
        this.camera = await openCamera();
      } catch (err) {
        $("publish-error").textContent = t("noDevice", { reason: errorReason(err) });
        return;
      }
      const [video] = this.camera.getVideoTracks();
      const [audio] = this.camera.getAudioTracks();
      try {
        if (video) await this.conn.publish("teacher_camera", video, t("source_teacher_camera"));
        if (audio) await this.conn.publish("classroom_mic", audio, t("source_classroom_mic"));
      } catch (err) {
        $("publish-error").textContent = this.errorText(err.code, err.serverMessage || err.message);
      }
    }
    this.renderPublishing();
  }

  async toggleShare() {
    $("publish-error").textContent = "";
    if (this.screen) {
      await this.conn.unpublish("courseware").catch(() => {});
      this.screen = null;
    } else {
      try {
        this.screen = await openScreen();
      } catch (err) {
        $("publish-error").textContent = t("noShare", { reason: errorReason(err) });
        return;
      }
      const [video] = this.screen.getVideoTracks();
      // Stopping from the browser's own "stop sharing" bar must unpublish too.
      video.addEventListener("ended", () => {
        if (this.screen) this.toggleShare();
      });
      try {
        video.contentHint = "detail";
        await this.conn.publish("courseware", video, t("source_courseware"));
      } catch (err) {
        $("publish-error").textContent = this.errorText(err.code, err.serverMessage || err.message);
      }
    }
    this.renderPublishing();
  }

  renderPublishing() {
    $("camera").textContent = t(this.camera ? "cameraOff" : "cameraOn");
    $("camera").classList.toggle("on", !!this.camera);
    $("share").textContent = t(this.screen ? "shareOff" : "shareOn");
    $("share").classList.toggle("on", !!this.screen);
    const list = [...this.conn.published.keys()].map((s) => t(`source_${s}`));
    $("publishing").textContent = list.length ? t("publishing", { list: list.join("、") }) : "";
    this.renderMedia();
  }

  // -- rendering -----------------------------------------------------------------------

  pointIds() {
    return new Set((this.state?.points || []).map((p) => p.classroom));
  }

  render() {
    const s = this.state;
    if (!s) return;
    const phase = $("phase");
    phase.textContent = t(`phase_${s.phase}`);
    phase.className = `badge ${s.phase}`;
    $("times").textContent =
      s.starts_at && s.ends_at ? t("times", { start: clock(s.starts_at), end: clock(s.ends_at) }) : "";
    $("start").hidden = s.phase !== "waiting";
    $("end").hidden = s.phase === "ended";
    if (s.phase === "ended") {
      $("camera").disabled = $("share").disabled = true;
      // Nothing is forwarded after the end: free the camera, microphone and screen.
      for (const stream of [this.camera, this.screen]) stream?.getTracks().forEach((tr) => tr.stop());
      this.camera = this.screen = null;
      this.notice(t("err_lesson_ended"));
    }
    this.renderHands();
    this.renderAttendance();
    this.renderChatTargets();
    this.renderMedia();
    this.renderDirector();
    this.renderDevices();
  }

  /** Each classroom device's report: on its tile, and this classroom's under "本教室". */
  renderDevices() {
    for (const tile of this.tiles.values()) {
      if (!tile.point) continue;
      const d = deviceText(this.devices[tile.point.classroom], t);
      tile.device.textContent = d.text;
      tile.device.classList.toggle("bad", d.bad);
    }
    const mine = this.conn.joined?.classroom;
    const d = deviceText(mine ? this.devices[mine] : null, t);
    $("my-device").textContent = d.text;
    $("my-device").classList.toggle("bad", d.bad);
  }

  /** The program monitor and the director's buttons: automatic, or one per camera. */
  renderDirector() {
    const d = this.state.director;
    if (!d) return;
    const label = (c) => `${c.name} · ${t(`source_${c.source}`) || c.label}`;
    const onAir = d.cameras.find((c) => c.track === d.on_air);
    const shot = onAir ? label(onAir) : "—";
    $("on-air").textContent =
      d.mode === "manual"
        ? t("onAirManual", { shot })
        : t("onAirAuto", { shot, reason: t(`reason_${d.reason || "teacher"}`) });
    const auto = $("director-auto");
    auto.classList.toggle("on", d.mode === "auto");
    auto.disabled = this.state.phase === "ended";
    const box = $("director-cameras");
    box.replaceChildren(
      ...d.cameras.map((c) => {
        const b = document.createElement("button");
        b.type = "button";
        b.dataset.track = c.track;
        b.textContent = c.usable ? label(c) : `${label(c)}（${t("noSignal")}）`;
        b.classList.toggle("on-air", c.track === d.on_air);
        b.disabled = this.state.phase === "ended";
        b.onclick = () => this.act("director", { track: c.track });
        return b;
      }),
    );
    const names = new Map(this.state.points.map((p) => [p.classroom, p.name]));
    const thin = (d.program_only || []).map((c) => names.get(c) || c);
    $("program-points").textContent = thin.length ? t("programPoints", { list: thin.join("、") }) : "";
  }

  renderHands() {
    const list = $("hands");
    list.replaceChildren();
    const hands = this.state.hands;
    $("no-hands").hidden = hands.length > 0;
    for (const h of hands) {
      const li = document.createElement("li");
      li.dataset.classroom = h.classroom;
      const label = document.createElement("span");
      label.textContent = `${h.name} · ${t("raisedAt", { time: clock(h.raised_at) })}`;
      const call = document.createElement("button");
      call.textContent = t("callOn");
      call.className = "primary";
      call.onclick = () => this.act("call_on", { classroom: h.classroom });
      const done = document.createElement("button");
      done.textContent = t("answered");
      done.onclick = () => this.act("hand_lower", { classroom: h.classroom });
      const buttons = document.createElement("span");
      buttons.className = "row";
      buttons.append(call, done);
      li.append(label, buttons);
      list.append(li);
    }
  }

  renderAttendance() {
    const body = $("attendance");
    body.replaceChildren();
    const seen = new Map(this.state.attendance.map((a) => [a.classroom, a]));
    const rows = [...this.state.attendance];
    for (const p of this.state.points) {
      if (!seen.has(p.classroom)) rows.push({ classroom: p.classroom, name: p.name, absent: true });
    }
    for (const a of rows) {
      const tr = document.createElement("tr");
      tr.dataset.classroom = a.classroom;
      const status = a.absent ? t("absent") : a.present ? t("here") : t("gone");
      for (const text of [a.name, status, a.absent ? "—" : duration(a.present_s), a.joins ?? 0]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      body.append(tr);
    }
  }

  renderChatTargets() {
    const select = $("chat-to");
    const current = select.value;
    select.replaceChildren(new Option(t("chatAll"), ""));
    for (const p of this.state.points) {
      select.append(new Option(t("chatTo", { name: p.name }), p.classroom));
    }
    select.value = [...select.options].some((o) => o.value === current) ? current : "";
  }

  renderChat() {
    renderChatLog(this.chat, t("privateTag"));
  }

  sendChat() {
    return sendChatInput(this.conn, (code, message) => this.errorText(code, message));
  }

  /** One tile per teaching point (and one per source of this classroom on the stage). */
  renderMedia() {
    const points = this.pointIds();
    const byClassroom = new Map();
    const stage = [];
    let program = null;
    for (const [mid, { info, track }] of this.tracks) {
      if (info.source === "program") {
        program = track;
      } else if (points.has(info.classroom)) {
        const entry = byClassroom.get(info.classroom) || {};
        entry[info.kind] = { mid, info, track };
        byClassroom.set(info.classroom, entry);
      } else {
        stage.push({ mid, info, track });
      }
    }
    this.renderStage(stage);
    attach($("program-video"), program);
    $("program-empty").hidden = !!program;
    const grid = $("points");
    const wanted = new Set();
    const pointList = this.state ? this.state.points : [];
    $("no-points").hidden = pointList.length > 0;
    for (const p of pointList) {
      wanted.add(p.classroom);
      const tile = this.pointTile(p.classroom, grid);
      tile.media = byClassroom.get(p.classroom) || {};
      tile.point = p;
      attach(tile.video, tile.media.video?.track || null);
      attach(tile.audio, tile.media.audio?.track || null);
      tile.el.classList.toggle("called", p.called_on);
      tile.el.classList.toggle("hand", p.hand);
      tile.name.textContent = p.name;
      tile.placeholder.textContent = p.present ? (tile.media.video ? "" : t("noVideo")) : t("offline");
      const live = this.state.phase === "live";
      tile.call.textContent = t(p.called_on ? "release" : "callOn");
      tile.call.className = p.called_on ? "on" : "primary";
      tile.call.disabled = !live || (!p.present && !p.called_on);
      tile.mute.textContent = t(p.muted ? "unmute" : "mute");
      tile.mute.className = p.muted ? "danger" : "";
      tile.mute.disabled = this.state.phase === "ended";
      this.renderFlags(tile);
    }
    for (const [key, tile] of this.tiles) {
      if (key.startsWith("point:") && !wanted.has(key.slice(6))) {
        tile.el.remove();
        this.tiles.delete(key);
      }
    }
    this.renderQuality();
  }

  renderStage(remote) {
    const stage = $("stage");
    const items = [];
    if (this.camera) items.push({ key: "local:camera", label: t("source_teacher_camera"), track: this.camera.getVideoTracks()[0] });
    if (this.screen) items.push({ key: "local:screen", label: t("source_courseware"), track: this.screen.getVideoTracks()[0] });
    for (const r of remote) {
      if (r.info.kind === "video") items.push({ key: `remote:${r.info.track}`, label: `${r.info.name} · ${t(`source_${r.info.source}`)}`, track: r.track });
      else items.push({ key: `remote:${r.info.track}`, audio: true, track: r.track });
    }
    const keep = new Set(items.map((i) => i.key));
    for (const el of [...stage.children]) if (!keep.has(el.dataset.key)) el.remove();
    for (const item of items) {
      let el = stage.querySelector(`[data-key="${CSS.escape(item.key)}"]`);
      if (!el) {
        if (item.audio) {
          el = audioElement();
          el.dataset.key = item.key;
          el.hidden = true;
        } else {
          el = videoTile();
          el.dataset.key = item.key;
        }
        stage.append(el);
      }
      if (item.audio) attach(el, item.track);
      else {
        attach(el.querySelector("video"), item.track);
        el.querySelector(".name").textContent = item.label;
      }
    }
  }

  pointTile(classroom, grid) {
    const key = `point:${classroom}`;
    let tile = this.tiles.get(key);
    if (tile) return tile;
    const el = document.createElement("div");
    el.className = "tile";
    el.dataset.classroom = classroom;
    const box = document.createElement("div");
    box.className = "video";
    const placeholder = document.createElement("span");
    const video = videoElement();
    const audio = audioElement();
    audio.hidden = true;
    const flags = document.createElement("div");
    flags.className = "flags";
    box.append(placeholder, video, flags, audio);
    const meta = document.createElement("div");
    meta.className = "meta";
    const name = document.createElement("span");
    name.className = "name";
    const quality = document.createElement("span");
    quality.className = "quality";
    const device = document.createElement("span");
    device.className = "quality device";
    const buttons = document.createElement("div");
    buttons.className = "row";
    const call = document.createElement("button");
    call.dataset.action = "call";
    const mute = document.createElement("button");
    mute.dataset.action = "mute";
    buttons.append(call, mute);
    meta.append(name, quality, device, buttons);
    el.append(box, meta);
    grid.append(el);
    tile = { el, video, audio, flags, name, quality, device, placeholder, call, mute, media: {}, point: null };
    call.onclick = () =>
      tile.point.called_on ? this.act("call_off") : this.act("call_on", { classroom });
    mute.onclick = () => this.act(tile.point.muted ? "unmute" : "mute", { classroom });
    this.tiles.set(key, tile);
    return tile;
  }

  renderFlags(tile) {
    const p = tile.point;
    const q = tile.media.video ? this.quality.get(tile.media.video.mid) : null;
    const flags = [];
    if (!p.present) flags.push(["offline", t("offline")]);
    if (p.called_on) flags.push(["called", t("called")]);
    if (p.hand) flags.push(["hand", t("hand")]);
    if (p.muted) flags.push(["muted", t("muted")]);
    if (q && q.frozen) flags.push(["frozen", t("frozen")]);
    tile.flags.replaceChildren(
      ...flags.map(([cls, text]) => {
        const span = document.createElement("span");
        span.className = `flag ${cls}`;
        span.textContent = text;
        return span;
      }),
    );
  }

  renderQuality() {
    for (const tile of this.tiles.values()) {
      if (!tile.point) continue;
      const q = tile.media.video ? this.quality.get(tile.media.video.mid) : null;
      if (!q || q.bitrateKbps == null) {
        tile.quality.textContent = tile.point.present && tile.media.video ? t("qualityUnknown") : "";
        tile.quality.classList.remove("bad");
      } else {
        tile.quality.textContent = t("quality", {
          kbps: Math.round(q.bitrateKbps),
          loss: (q.lossPct ?? 0).toFixed(1),
          fps: q.fps != null ? Math.round(q.fps) : "—",
        });
        tile.quality.classList.toggle("bad", q.frozen || (q.lossPct ?? 0) > 5);
      }
      this.renderFlags(tile);
    }
  }
}

new MasterConsole().start();
