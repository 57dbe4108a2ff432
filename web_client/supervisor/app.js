// The county supervisor's view: every live lesson, each teaching point's presence and link
// quality, refreshed every few seconds; one click to watch a lesson (observer token from
// the session, opened in the lesson viewer).

import { applyPage, clock, translator } from "../common/i18n.js";
import { DEVICE_STRINGS, deviceText } from "../common/device.js";
import { api, loginUrl, me } from "../common/session.js";

const STRINGS = {
  zh: {
    ...DEVICE_STRINGS.zh,
    title: "课堂巡视",
    langSwitch: "English",
    noLessons: "现在没有进行中的课。",
    summary: "{live} 节直播中，{points} 个教学点在线",
    updated: "更新于 {time}",
    watch: "观看",
    phase_waiting: "未开始",
    phase_live: "直播中",
    phase_ended: "已下课",
    masterAbsent: "主讲教室未上线",
    absent: "未到",
    quality: "上行丢包 {up}% · 往返 {rtt} ms · 下行丢包 {down}%",
    calledOn: "发言中",
    hand: "举手",
    muted: "静音",
    error: "无法读取：{message}",
    masterDevice: "主讲教室",
  },
  en: {
    ...DEVICE_STRINGS.en,
    title: "Lesson supervision",
    langSwitch: "中文",
    noLessons: "No lesson is running now.",
    summary: "{live} live, {points} teaching points online",
    updated: "updated {time}",
    watch: "Watch",
    phase_waiting: "Not started",
    phase_live: "Live",
    phase_ended: "Ended",
    masterAbsent: "master classroom offline",
    absent: "absent",
    quality: "up loss {up}% · RTT {rtt} ms · down loss {down}%",
    calledOn: "speaking",
    hand: "hand",
    muted: "muted",
    error: "Cannot load: {message}",
    masterDevice: "Master classroom",
  },
};
const t = translator(STRINGS);
const $ = (id) => document.getElementById(id);
const REFRESH_MS = 5000;
const fmt = (v) => (v == null ? "—" : String(v));

function pointRow(p) {
  const li = document.createElement("li");
  li.dataset.classroom = p.classroom;
  const worst = Math.max(p.uplink_loss_pct ?? 0, p.downlink_loss_pct ?? 0);
  li.className = !p.present ? "absent" : worst > 5 || (p.rtt_ms ?? 0) > 800 ? "bad" : worst > 1 ? "warn" : "";
  const name = document.createElement("span");
  const flags = [];
  if (p.called_on) flags.push(t("calledOn"));
  if (p.hand) flags.push(t("hand"));
  if (p.muted) flags.push(t("muted"));
  name.textContent = p.name + (flags.length ? ` · ${flags.join(" · ")}` : "");
  const q = document.createElement("span");
  q.className = "q";
  q.textContent = p.present
    ? t("quality", { up: fmt(p.uplink_loss_pct), rtt: fmt(p.rtt_ms), down: fmt(p.downlink_loss_pct) })
    : t("absent");
  li.append(name, q);
  const device = deviceText(p.device, t);
  if (device.text) {
    const d = document.createElement("span");
    d.className = device.bad ? "q device bad" : "q device";
    d.textContent = device.text;
    li.append(d);
  }
  return li;
}

async function watch(room) {
  const reply = await api("POST", "/api/auth/room-token", { room });
  window.open(`/lesson/${encodeURIComponent(room)}?token=${encodeURIComponent(reply.token)}`, "_blank");
}

async function refresh() {
  let data;
  try {
    data = await api("GET", "/api/supervisor");
  } catch (err) {
    if (err.status === 401) window.location.href = loginUrl();
    $("notice").textContent = t("error", { message: err.message });
    $("notice").hidden = false;
    return;
  }
  $("notice").hidden = true;
  window.tongkeSupervisor = data;
  const grid = $("lessons");
  grid.replaceChildren();
  let live = 0;
  let online = 0;
  for (const l of data.lessons) {
    if (l.phase === "live") live += 1;
    const card = document.createElement("section");
    card.className = "panel lesson-card";
    card.dataset.room = l.room;
    const head = document.createElement("header");
    const h = document.createElement("h2");
    h.textContent = l.title || l.room;
    const badge = document.createElement("span");
    badge.className = `badge ${l.phase}`;
    badge.textContent = t(`phase_${l.phase}`);
    const when = document.createElement("span");
    when.className = "hint";
    when.textContent = l.starts_at ? `${clock(l.starts_at)}–${clock(l.ends_at)}` : "";
    const button = document.createElement("button");
    button.textContent = t("watch");
    button.onclick = () => watch(l.room);
    head.append(h, badge, when, button);
    card.append(head);
    if (!l.master_present) {
      const warn = document.createElement("p");
      warn.className = "error-text";
      warn.textContent = t("masterAbsent");
      card.append(warn);
    }
    const masterDevice = deviceText(l.master_device, t);
    if (masterDevice.text) {
      const p = document.createElement("p");
      p.className = masterDevice.bad ? "q device bad" : "q device";
      p.dataset.device = "master";
      p.textContent = `${t("masterDevice")} · ${masterDevice.text}`;
      card.append(p);
    }
    const list = document.createElement("ul");
    list.className = "point-list";
    for (const p of l.points) {
      if (p.present) online += 1;
      list.append(pointRow(p));
    }
    card.append(list);
    grid.append(card);
  }
  $("empty").hidden = data.lessons.length > 0;
  $("summary").textContent = t("summary", { live, points: online });
  $("updated").textContent = t("updated", { time: new Date().toLocaleTimeString() });
}

applyPage(t);
if (!(await me())) {
  window.location.href = loginUrl();
} else {
  await refresh();
  setInterval(refresh, REFRESH_MS);
}
