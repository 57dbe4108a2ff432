// The teaching-point console: today's lessons from the classroom's timetable feed, one
// click to join, the classroom's camera and microphone published from the browser, a
// big picture that follows the lesson (called-on point, courseware, teacher), raised
// hand, private chat with the master teacher, and a kiosk/TV mode with no controls.

import { renderChatLog, sendChatInput } from "../common/chat.js";
import { ClassroomConnection } from "../common/classroom.js";
import { applyPage, clock, translator } from "../common/i18n.js";
import {
  attach,
  audioElement,
  errorReason,
  openCamera,
  videoElement,
  videoTile,
} from "../common/media.js";
import { api, loginUrl, roomToken } from "../common/session.js";
import { STRINGS } from "./i18n.js";

const t = translator(STRINGS);
const $ = (id) => document.getElementById(id);
const FEED_REFRESH_MS = 60000;
const JOIN_EARLY_S = 15 * 60; // the join button opens this long before the start

function fromLocation(loc = window.location) {
  const match = loc.pathname.match(/\/point\/([^/]+)\/?$/);
  const q = new URLSearchParams(loc.search);
  return {
    classroom: match ? decodeURIComponent(match[1]) : "",
    feed: q.get("feed") || "",
    room: q.get("room") || "",
    token: q.get("token") || "",
    kiosk: q.get("kiosk") === "1",
    // The point's own teacher on a phone or second screen: controls only, no camera.
    tutor: q.get("as") === "tutor",
  };
}

class PointConsole {
  constructor() {
    this.params = fromLocation();
    this.conn = null;
    this.state = null;
    this.tracks = new Map();
    this.chat = [];
    this.camera = null;
    this.lessons = [];
    this.wakeLock = null;
    window.tongke = { console: this, chat: this.chat, errors: [], lessons: this.lessons };
  }

  start() {
    applyPage(t);
    $("hand").onclick = () => this.toggleHand();
    $("mic").onclick = () => this.toggleMic();
    $("receive").onchange = () => this.setReceive($("receive").value);
    $("kiosk").onclick = () => this.setKiosk(true);
    $("leave").onclick = () => this.leave();
    $("chat-form").onsubmit = (e) => {
      e.preventDefault();
      this.sendChat();
    };
    // Leaving kiosk mode: Escape, or a double click/tap anywhere.
    document.addEventListener("keydown", (e) => e.key === "Escape" && this.setKiosk(false));
    document.addEventListener("dblclick", () => document.body.classList.contains("kiosk") && this.setKiosk(false));
    window.addEventListener("pagehide", () => this.conn?.close());
    if (this.params.room) {
      this.join(this.params.room, this.params.token);
    } else {
      this.showLessons();
    }
  }

  notice(text, bad = false) {
    const n = $("notice");
    n.textContent = text;
    n.classList.toggle("bad", bad);
    n.hidden = !text;
  }

  errorText(code, message) {
    const key = `err_${code}`;
    return STRINGS.zh[key] ? t(key, { message }) : t("err_generic", { code, message });
  }

  // -- the timetable -------------------------------------------------------------------

  async showLessons() {
    $("lessons-view").hidden = false;
    $("lesson-view").hidden = true;
    $("controls").hidden = true;
    const { classroom, feed } = this.params;
    if (!classroom) {
      this.notice(t("noFeed"), true);
      return;
    }
    await this.loadFeed();
    clearInterval(this._feedTimer);
    this._feedTimer = setInterval(() => this.loadFeed(), FEED_REFRESH_MS);
  }

  async loadFeed() {
    const { classroom, feed } = this.params;
    // The feed token is in an HttpOnly cookie (the server moved it there from the old
    // `?feed=TOKEN` link); the address only says `feed=1`.
    const url = `/api/schedule/feeds/${encodeURIComponent(classroom)}.json`;
    try {
      let lessons;
      if (feed) {
        // A classroom PC opened with its feed link: the feed carries each lesson's token.
        const resp = await fetch(url, { cache: "no-cache", credentials: "same-origin" });
        const body = await resp.json();
        if (!resp.ok) throw new Error(body.error ? body.error.message : resp.statusText);
        lessons = body.lessons;
      } else {
        // A signed-in teacher: tokens come from the session when joining.
        lessons = (await api("GET", "/api/auth/lessons")).lessons.map((l) => ({ ...l, token: "session" }));
      }
      this.lessons.splice(0, this.lessons.length, ...lessons.filter((l) => l.classroom_id === classroom));
      this.notice("");
    } catch (err) {
      if (err.status === 401) {
        window.location.href = loginUrl();
        return;
      }
      this.notice(t("feedError", { message: err.message }), true);
    }
    this.renderLessons();
  }

  renderLessons() {
    const list = $("lessons");
    list.replaceChildren();
    const now = Date.now() / 1000;
    const soon = this.lessons.filter((l) => Date.parse(l.end) / 1000 > now - 3600).slice(0, 12);
    $("lessons-empty").hidden = soon.length > 0;
    $("lessons-empty").textContent = t("noLessons");
    for (const l of soon) {
      const start = Date.parse(l.start) / 1000;
      const end = Date.parse(l.end) / 1000;
      const li = document.createElement("li");
      li.dataset.room = l.room_id;
      const when = document.createElement("span");
      when.className = "when";
      const day = new Date(start * 1000).toDateString() === new Date().toDateString()
        ? t("today")
        : new Date(start * 1000).toLocaleDateString([], { month: "numeric", day: "numeric" });
      when.textContent = `${day} ${clock(start)}–${clock(end)}`;
      const what = document.createElement("span");
      what.className = "what";
      what.textContent = `${l.title} · ${t("master", { name: l.master_classroom_id })}`;
      const button = document.createElement("button");
      button.className = "primary";
      button.textContent = t("join");
      if (l.status === "cancelled") {
        button.disabled = true;
        button.textContent = t("cancelled");
      } else if (end <= now) {
        button.disabled = true;
        button.textContent = t("over");
      } else if (start - now > JOIN_EARLY_S || !l.token) {
        button.disabled = true;
        button.textContent = t("joinSoon", { minutes: Math.ceil((start - now) / 60) });
      } else {
        li.classList.add("now");
      }
      button.onclick = () => this.join(l.room_id, l.token);
      li.append(when, what, button);
      if (l.tutor_url && !button.disabled) {
        const tutor = document.createElement("a");
        tutor.href = l.tutor_url;
        tutor.className = "tutor-link";
        tutor.textContent = t("tutorJoin");
        li.append(tutor);
      }
      list.append(li);
    }
  }

  // -- the lesson ----------------------------------------------------------------------

  async join(room, token) {
    clearInterval(this._feedTimer);
    const tutor = this.params.tutor;
    if (!token || token === "session") {
      try {
        token = await roomToken(room, { as: tutor ? "tutor" : null });
      } catch (err) {
        this.notice(t("failed", { message: this.errorText(err.code, err.message) }), true);
        return;
      }
      if (!token) return;
    }
    $("lessons-view").hidden = true;
    $("lesson-view").hidden = false;
    $("controls").hidden = false;
    const conn = new ClassroomConnection({ room, token });
    this.conn = conn;
    window.tongke.conn = conn;
    conn.addEventListener("status", (e) => {
      if (e.detail === "connecting") this.notice(t("connecting"));
      else if (e.detail === "reconnecting") this.notice(t("reconnecting"), true);
      else if (e.detail === "joined") this.notice("");
    });
    conn.addEventListener("failed", (e) => {
      this.notice(t("failed", { message: this.errorText(e.detail.code, e.detail.message) }), true);
      $("hand").disabled = $("mic").disabled = true;
    });
    conn.addEventListener("joined", (e) => {
      $("title").textContent = e.detail.title || e.detail.room;
    });
    conn.addEventListener("state", (e) => {
      this.state = e.detail.state;
      this.render();
    });
    conn.addEventListener("history", (e) => {
      this.chat.splice(0, this.chat.length, ...e.detail);
      this.renderChat();
    });
    conn.addEventListener("chat", (e) => {
      this.chat.push(e.detail);
      this.renderChat();
    });
    conn.addEventListener("tracks", (e) => {
      this.tracks = e.detail;
      this.renderMedia();
    });
    this.renderChatTargets();
    if (this.params.kiosk) this.setKiosk(true);
    if (tutor) {
      // The classroom's device publishes; the tutor's page only controls.
      document.body.classList.add("tutor");
      $("preview-title").textContent = t("tutorTitle");
      $("publish-error").textContent = t("tutorHint");
      $("publish-error").className = "hint";
      await conn.connect();
      this.renderMic();
      return;
    }
    // The camera opens while the socket connects; it is published once joined.
    const camera = this.openCamera();
    await conn.connect();
    await camera;
  }

  async setReceive(mode) {
    try {
      await this.conn.action("receive_mode", { mode });
    } catch (err) {
      window.tongke.errors.push({ code: err.code, message: err.serverMessage });
      this.notice(this.errorText(err.code, err.serverMessage), true);
    }
  }

  async openCamera() {
    try {
      this.camera = await openCamera();
    } catch (err) {
      $("publish-error").textContent = t("noDevice", { reason: errorReason(err) });
      return;
    }
    attach($("preview"), this.camera.getVideoTracks()[0]);
    const [video] = this.camera.getVideoTracks();
    const [audio] = this.camera.getAudioTracks();
    try {
      if (video) await this.conn.publish("point_camera", video);
      if (audio) await this.conn.publish("point_mic", audio);
    } catch (err) {
      $("publish-error").textContent = this.errorText(err.code, err.serverMessage || err.message);
    }
    this.renderMic();
  }

  mine() {
    return this.conn?.joined?.classroom;
  }

  async toggleHand() {
    const up = this.state?.hands.some((h) => h.classroom === this.mine());
    try {
      await this.conn.action(up ? "hand_lower" : "hand_raise");
    } catch (err) {
      window.tongke.errors.push({ code: err.code, message: err.serverMessage });
      this.notice(this.errorText(err.code, err.serverMessage), true);
    }
  }

  toggleMic() {
    if (this.params.tutor) {
      // The tutor silences its classroom on the server (everyone stops hearing it).
      const muted = this.state?.muted.includes(this.mine());
      this.conn?.action(muted ? "unmute" : "mute").catch((err) => {
        this.notice(this.errorText(err.code, err.serverMessage), true);
      });
      return;
    }
    const audio = this.camera?.getAudioTracks()[0];
    if (!audio) return;
    // Local mute: the track sends silence; the master's mute is separate and server-side.
    audio.enabled = !audio.enabled;
    this.renderMic();
  }

  renderMic() {
    if (this.params.tutor) {
      const muted = !!this.state?.muted.includes(this.mine());
      $("mic").disabled = !this.state || this.state.phase === "ended";
      $("mic").textContent = t(muted ? "classUnmute" : "classMute");
      $("mic").classList.toggle("danger", muted);
      return;
    }
    const audio = this.camera?.getAudioTracks()[0];
    $("mic").disabled = !audio;
    $("mic").textContent = t(audio && !audio.enabled ? "micOn" : "micOff");
    $("mic").classList.toggle("danger", !!audio && !audio.enabled);
  }

  async setKiosk(on) {
    document.body.classList.toggle("kiosk", on);
    try {
      if (on) {
        if (!document.fullscreenElement) await document.documentElement.requestFullscreen();
      } else if (document.fullscreenElement) {
        await document.exitFullscreen();
      }
    } catch {
      // Full screen needs a click; the layout still fills the window.
    }
    try {
      if (on && "wakeLock" in navigator) this.wakeLock = await navigator.wakeLock.request("screen");
      else if (!on && this.wakeLock) await this.wakeLock.release();
    } catch {
      // No wake lock (e.g. not visible yet): the TV's own settings apply.
    }
  }

  leave() {
    this.conn?.close();
    this.conn = null;
    if (this.camera) this.camera.getTracks().forEach((tr) => tr.stop());
    this.camera = null;
    attach($("preview"), null);
    if (this.params.feed) this.showLessons();
    else window.location.reload();
  }

  render() {
    const s = this.state;
    const phase = $("phase");
    phase.hidden = false;
    phase.textContent = t(`phase_${s.phase}`);
    phase.className = `badge ${s.phase}`;
    const mine = this.mine();
    const up = s.hands.some((h) => h.classroom === mine);
    $("hand").textContent = t(up ? "lowerHand" : "raiseHand");
    $("hand").className = up ? "on" : "primary";
    $("hand").disabled = s.phase !== "live";
    const banner = $("banner");
    banner.classList.remove("muted");
    if (s.phase === "ended") {
      banner.textContent = t("lessonEnded");
      // Nothing is forwarded after the end: free the camera and microphone.
      if (this.camera) {
        this.camera.getTracks().forEach((tr) => tr.stop());
        this.camera = null;
        attach($("preview"), null);
        this.renderMic();
      }
    } else if (s.muted.includes(mine)) {
      banner.textContent = t("mutedByMaster");
      banner.classList.add("muted");
    } else if (s.called_on === mine) {
      banner.textContent = t("calledOnYou");
    } else if (s.called_on) {
      const p = s.points.find((x) => x.classroom === s.called_on);
      banner.textContent = t("calledOnOther", { name: p ? p.name : s.called_on });
    } else {
      banner.textContent = "";
    }
    banner.hidden = !banner.textContent;
    const d = s.director;
    if (d) {
      const select = $("receive");
      if (document.activeElement !== select) select.value = d.receive_modes[mine] || "all";
      const only = d.program_only.includes(mine);
      select.classList.toggle("on", only);
      select.title = only ? t("programOnly") : "";
    }
    if (this.params.tutor) this.renderMic();
    this.renderMedia();
  }

  /** The big picture: the called-on point, else courseware, else the teacher camera. */
  renderMedia() {
    const videos = [];
    const audio = $("audio");
    const audioKeep = new Set();
    for (const [mid, { info, track }] of this.tracks) {
      if (info.kind === "video") videos.push({ mid, info, track });
      else {
        audioKeep.add(mid);
        let el = audio.querySelector(`[data-mid="${CSS.escape(mid)}"]`);
        if (!el) {
          el = audioElement();
          el.dataset.mid = mid;
          audio.append(el);
        }
        attach(el, track);
      }
    }
    for (const el of [...audio.children]) if (!audioKeep.has(el.dataset.mid)) el.remove();
    const called = this.state?.called_on;
    // The program (a thin link receives it alone) already follows the lesson.
    const rank = (v) =>
      v.info.source === "program" ? -1 : v.info.classroom === called && called ? 0 : v.info.source === "courseware" ? 1 : v.info.source === "teacher_camera" ? 2 : 3;
    videos.sort((a, b) => rank(a) - rank(b));
    const [main, ...rest] = videos;
    const focus = $("focus");
    let fv = focus.querySelector("video");
    if (!fv) {
      fv = videoElement();
      focus.append(fv);
      const caption = document.createElement("span");
      caption.className = "caption";
      focus.append(caption);
    }
    $("focus-empty").hidden = !!main;
    attach(fv, main ? main.track : null);
    fv.dataset.source = main ? main.info.track : "";
    const caption = focus.querySelector(".caption");
    caption.textContent = main ? `${main.info.name} · ${t(`source_${main.info.source}`)}` : "";
    caption.hidden = !main;
    const strip = $("strip");
    const keep = new Set(rest.map((v) => v.mid));
    for (const el of [...strip.children]) if (!keep.has(el.dataset.mid)) el.remove();
    for (const v of rest) {
      let el = strip.querySelector(`[data-mid="${CSS.escape(v.mid)}"]`);
      if (!el) {
        el = videoTile();
        el.dataset.mid = v.mid;
        strip.append(el);
      }
      attach(el.querySelector("video"), v.track);
      el.querySelector(".name").textContent = `${v.info.name} · ${t(`source_${v.info.source}`)}`;
    }
  }

  renderChatTargets() {
    const select = $("chat-to");
    select.replaceChildren(new Option(t("chatMaster"), "master"), new Option(t("chatAll"), ""));
  }

  renderChat() {
    renderChatLog(this.chat, t("privateTag"));
  }

  sendChat() {
    return sendChatInput(this.conn, (code, message) => this.errorText(code, message));
  }
}

new PointConsole().start();
