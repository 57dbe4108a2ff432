// The ops page: every open lesson and, for each classroom in it, its last hour of link
// quality as small charts (downlink estimate, loss, RTT, received frame rate with pauses).
// The server samples every few seconds (media_server/ops.py); the page fetches only the
// samples it has not seen yet.

import { applyPage, translator } from "../common/i18n.js";
import { api, loginUrl, me } from "../common/session.js";

const STRINGS = {
  zh: {
    title: "运行监控",
    supervisor: "课堂巡视",
    langSwitch: "English",
    noLessons: "现在没有进行中的课。",
    summary: "{lessons} 节课 · {classrooms} 个教室在线",
    updated: "更新于 {time}",
    legend: "最近 {m} 分钟（最多一小时），每 {s} 秒一个点。蓝线：下行；黄线：上行；红色：暂停。",
    phase_waiting: "未开始",
    phase_live: "直播中",
    phase_ended: "已下课",
    role_master: "主讲教室",
    role_point: "教学点",
    left: "已离开",
    estimate: "下行带宽",
    loss: "丢包",
    rtt: "往返时延",
    fps: "收到的帧率",
    paused: "暂停 {n} 路",
    error: "无法读取：{message}",
  },
  en: {
    title: "Operations",
    supervisor: "Supervision",
    langSwitch: "中文",
    noLessons: "No lesson is running now.",
    summary: "{lessons} lessons · {classrooms} classrooms online",
    updated: "updated {time}",
    legend: "The last {m} min (up to an hour), one point every {s} s. Blue: downlink; yellow: uplink; red: paused.",
    phase_waiting: "Not started",
    phase_live: "Live",
    phase_ended: "Ended",
    role_master: "Master classroom",
    role_point: "Teaching point",
    left: "left",
    estimate: "Downlink estimate",
    loss: "Loss",
    rtt: "Round trip",
    fps: "Frames received",
    paused: "{n} paused",
    error: "Cannot load: {message}",
  },
};
const t = translator(STRINGS);
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const HOUR_S = 3600;
const W = 360;
const H = 56;

// room -> { classrooms: Map(classroom -> {role, samples}), last: newest sample time }
const histories = new Map();
window.tongkeOps = { histories, lessons: [] };

const kbps = (v) => (v == null ? "—" : v >= 1e6 ? `${(v / 1e6).toFixed(1)} Mbit/s` : `${Math.round(v / 1e3)} kbit/s`);
const pct = (v) => (v == null ? "—" : `${(100 * v).toFixed(1)}%`);
const ms = (v) => (v == null ? "—" : `${Math.round(v)} ms`);
const fps = (v) => (v == null ? "—" : `${Math.round(v)} fps`);

const CHARTS = [
  { key: "estimate", series: [(s) => s.estimate_bps], format: kbps, floor: 500e3 },
  { key: "loss", series: [(s) => s.down_loss, (s) => s.up_loss], format: pct, floor: 0.05 },
  { key: "rtt", series: [(s) => s.rtt_ms], format: ms, floor: 200 },
  { key: "fps", series: [(s) => s.fps], format: fps, floor: 30, paused: true },
];

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

/** One small chart over [now - span, now]: a polyline per series, gaps where unknown. */
function chart(spec, samples, now, span, step) {
  const box = el("div", "chart");
  box.dataset.chart = spec.key;
  const latest = samples[samples.length - 1];
  const label = el("div", "label");
  const nowText = spec.series.map((get) => spec.format(latest ? get(latest) : null)).join(" / ");
  label.append(el("span", "", t(spec.key)), el("span", "now", nowText));
  if (spec.paused && latest?.paused) label.append(el("span", "now", t("paused", { n: latest.paused })));
  const plot = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
  plot.setAttribute("aria-label", `${t(spec.key)}: ${nowText}`);
  const x = (s) => ((s.t - (now - span)) / span) * W;
  let top = spec.floor;
  for (const get of spec.series) for (const s of samples) top = Math.max(top, 1.15 * (get(s) ?? 0));
  const y = (v) => H - 2 - (v / top) * (H - 6);
  plot.append(svg("line", { class: "grid", x1: 0, x2: W, y1: y(top / 2), y2: y(top / 2) }));
  const barW = Math.max(1, (step / span) * W);
  if (spec.paused) {
    for (const s of samples) {
      if (s.paused > 0) plot.append(svg("rect", { class: "paused", x: x(s) - barW, y: 0, width: barW, height: H }));
    }
  }
  let drawn = 0;
  spec.series.forEach((get, i) => {
    let run = [];
    const flush = () => {
      if (run.length === 1) run.push(`${(Number(run[0].split(",")[0]) + barW).toFixed(1)},${run[0].split(",")[1]}`);
      if (run.length) plot.append(svg("polyline", { class: `s${i}`, points: run.join(" ") }));
      run = [];
    };
    let prev = null;
    for (const s of samples) {
      const v = get(s);
      if (v == null || (prev && s.t - prev.t > 3 * step)) flush();
      if (v != null) {
        run.push(`${x(s).toFixed(1)},${y(v).toFixed(1)}`);
        drawn += 1;
      }
      prev = s;
    }
    flush();
  });
  plot.dataset.points = String(drawn);
  box.append(label, plot);
  return box;
}

/** "bad", "warn" or "" from the newest sample: what a supervisor should look at first. */
function health(latest) {
  if (!latest) return "";
  const loss = Math.max(latest.down_loss ?? 0, latest.up_loss ?? 0);
  if (loss > 0.05 || (latest.rtt_ms ?? 0) > 800 || latest.fps === 0) return "bad";
  if (loss > 0.01 || (latest.rtt_ms ?? 0) > 300 || latest.paused > 0) return "warn";
  return "";
}

function classroomRow(c, samples, now, span, step) {
  const row = el("div", `ops-classroom ${c.present ? health(c.latest) : "gone"}`.trim());
  row.dataset.classroom = c.classroom;
  const who = el("div", c.present ? "who" : "who gone");
  who.append(el("strong", "", c.name || c.classroom), el("span", "hint", t(`role_${c.role}`)));
  if (!c.present) who.append(el("span", "hint", t("left")));
  row.append(who);
  for (const spec of CHARTS) row.append(chart(spec, samples, now, span, step));
  return row;
}

async function merge(room) {
  let h = histories.get(room);
  if (!h) histories.set(room, (h = { classrooms: new Map(), last: 0 }));
  const data = await api("GET", `/api/ops/${encodeURIComponent(room)}?since=${h.last}`);
  for (const c of data.classrooms) {
    let entry = h.classrooms.get(c.classroom);
    if (!entry) h.classrooms.set(c.classroom, (entry = { role: c.role, samples: [] }));
    entry.samples.push(...c.samples);
    for (const s of c.samples) h.last = Math.max(h.last, s.t);
  }
  const cutoff = h.last - HOUR_S;
  for (const entry of h.classrooms.values()) {
    while (entry.samples.length && entry.samples[0].t < cutoff) entry.samples.shift();
  }
  return h;
}

async function refresh() {
  let data;
  try {
    data = await api("GET", "/api/ops");
    for (const l of data.lessons) await merge(l.room);
  } catch (err) {
    if (err.status === 401) window.location.href = loginUrl();
    $("notice").textContent = t("error", { message: err.message });
    $("notice").hidden = false;
    return;
  }
  $("notice").hidden = true;
  window.tongkeOps.lessons = data.lessons;
  // Every chart shares one time axis: the last hour, or since the oldest sample held
  // (a lesson that started minutes ago fills its charts instead of a sliver at the edge).
  const now = Date.now() / 1000;
  let oldest = now;
  for (const h of histories.values()) {
    for (const entry of h.classrooms.values()) oldest = Math.min(oldest, entry.samples[0]?.t ?? now);
  }
  const span = Math.min(HOUR_S, Math.max(60, now - oldest + data.interval_s));
  $("legend").textContent = t("legend", { s: data.interval_s, m: Math.round(span / 60) });
  const main = $("lessons");
  main.replaceChildren();
  let online = 0;
  for (const l of data.lessons) {
    const panel = el("section", "panel ops-lesson");
    panel.dataset.room = l.room;
    const head = el("header");
    head.append(el("h2", "", l.title || l.room), el("span", `badge ${l.phase}`, t(`phase_${l.phase}`)));
    panel.append(head);
    const h = histories.get(l.room);
    for (const c of l.classrooms) {
      if (c.present) online += 1;
      const samples = h?.classrooms.get(c.classroom)?.samples ?? [];
      panel.append(classroomRow(c, samples, now, span, data.interval_s));
    }
    main.append(panel);
  }
  $("empty").hidden = data.lessons.length > 0;
  $("summary").textContent = t("summary", { lessons: data.lessons.length, classrooms: online });
  $("updated").textContent = t("updated", { time: new Date().toLocaleTimeString() });
  return data.interval_s;
}

applyPage(t);
if (!(await me())) {
  window.location.href = loginUrl();
} else {
  const interval = (await refresh()) ?? 10;
  setInterval(refresh, Math.max(2, interval) * 1000);
}
