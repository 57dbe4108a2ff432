// Timetable grids: weekdays across, lesson start times down, one colour per subject; the
// same grid can be drawn as a picture (PNG) to print or send to schools.
import { t } from "./i18n.js";

const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
  "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"];
const known = new Map();

export function subjectColor(subject) {
  if (!known.has(subject)) known.set(subject, PALETTE[known.size % PALETTE.length]);
  return known.get(subject);
}

export function gridTargets(plan, kind) {
  if (kind === "classroom") {
    return plan.classrooms.filter((c) => c.role === "master").map((c) => [c.id, `${c.name} (${c.id})`]);
  }
  const want = kind === "point" ? ["point"] : ["central", "ordinary"];
  return plan.schools.filter((s) => want.includes(s.kind)).map((s) => [s.id, `${s.name} (${s.id})`]);
}

function lessonsFor(plan, kind, target) {
  const withPoints = plan.lessons.filter((l) => l.points.length);
  if (kind === "classroom") return withPoints.filter((l) => l.master_classroom === target);
  if (kind === "point") return withPoints.filter((l) => l.points.some((p) => p.school === target));
  return withPoints.filter((l) => l.master_school === target);
}

// Rows (times) and cells (weekday 1-5) of one grid, shared by the table and the picture.
function gridModel(plan, kind, target) {
  const lessons = lessonsFor(plan, kind, target);
  const times = [...new Set(lessons.map((l) => `${l.start}–${l.end}`))].sort();
  const subjects = [...new Set(lessons.map((l) => l.subject))].sort();
  const cell = (wd, time) => lessons.filter((x) => x.weekday === wd && `${x.start}–${x.end}` === time)
    .map((l) => ({
      lesson: l,
      title: `${l.subject} · ${t("grade", { grade: l.grade })}`,
      who: kind === "point" ? `${l.master_class_name} · ${l.teacher_name}`
        : l.points.map((p) => p.name).join(", "),
    }));
  return { times, subjects, cell };
}

export function renderGrid(plan, kind, target) {
  const { times, subjects, cell } = gridModel(plan, kind, target);
  const table = document.createElement("table");
  table.className = "grid";
  table.dataset.kind = kind;
  table.dataset.target = target || "";
  const head = table.createTHead().insertRow();
  head.append(Object.assign(document.createElement("th"), { textContent: t("time") }));
  for (const d of t("days")) head.append(Object.assign(document.createElement("th"), { textContent: d }));
  const body = table.createTBody();
  if (!times.length) {
    const c = body.insertRow().insertCell();
    c.colSpan = 6;
    c.textContent = t("noLessons");
  }
  for (const time of times) {
    const row = body.insertRow();
    const tc = row.insertCell();
    tc.className = "time";
    tc.textContent = time;
    for (let wd = 1; wd <= 5; wd++) {
      const td = row.insertCell();
      for (const item of cell(wd, time)) {
        const l = item.lesson;
        const box = document.createElement("div");
        box.className = "lesson" + (l.moved ? " moved" : "");
        box.style.background = subjectColor(l.subject);
        box.dataset.subject = l.subject;
        box.title = `${l.master_class_name} · ${l.teacher_name}\n` + l.points.map((p) => p.name).join("\n");
        const title = document.createElement("div");
        title.textContent = item.title;
        const sub = document.createElement("div");
        sub.className = "who";
        sub.textContent = item.who;
        box.append(title, sub);
        td.append(box);
      }
    }
  }
  return { table, subjects };
}

// Wrap text into lines no wider than `width` (CJK has no spaces: wrap by character).
function wrap(ctx, text, width) {
  const lines = [];
  let line = "";
  for (const ch of text) {
    if (ctx.measureText(line + ch).width > width && line) {
      lines.push(line);
      line = ch;
    } else line += ch;
  }
  if (line) lines.push(line);
  return lines;
}

// The grid as a picture: a canvas sized to its content, white background, a heading.
export function gridPicture(plan, kind, target, heading) {
  const { times, cell } = gridModel(plan, kind, target);
  const timeW = 110, colW = 210, pad = 6, lineH = 17, headH = 34, titleH = 40;
  const canvas = document.createElement("canvas");
  const ctx = canvas.getContext("2d");
  const font = '14px "Noto Sans CJK SC", "Microsoft YaHei", sans-serif';
  ctx.font = font;
  const rows = times.map((time) => {
    let h = 2 * pad + lineH;
    for (let wd = 1; wd <= 5; wd++) {
      let used = pad;
      for (const item of cell(wd, time)) {
        used += lineH * (1 + wrap(ctx, item.who, colW - 4 * pad).length) + 2 * pad;
      }
      h = Math.max(h, used + pad);
    }
    return h;
  });
  canvas.width = timeW + 5 * colW;
  canvas.height = titleH + headH + (rows.reduce((a, b) => a + b, 0) || 40);
  ctx.font = font;
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.fillStyle = "#000";
  ctx.font = 'bold 18px "Noto Sans CJK SC", "Microsoft YaHei", sans-serif';
  ctx.fillText(heading, pad, 26);
  ctx.font = font;
  ctx.strokeStyle = "#999";
  const days = t("days");
  ctx.fillText(t("time"), pad, titleH + 22);
  days.forEach((d, i) => ctx.fillText(d, timeW + i * colW + pad, titleH + 22));
  let y = titleH + headH;
  ctx.strokeRect(0, titleH, canvas.width, headH);
  if (!times.length) ctx.fillText(t("noLessons"), pad, y + 24);
  times.forEach((time, r) => {
    ctx.strokeRect(0, y, timeW, rows[r]);
    ctx.fillStyle = "#000";
    ctx.fillText(time, pad, y + pad + 13);
    for (let wd = 1; wd <= 5; wd++) {
      const x = timeW + (wd - 1) * colW;
      ctx.strokeRect(x, y, colW, rows[r]);
      let cy = y + pad;
      for (const item of cell(wd, time)) {
        const lines = wrap(ctx, item.who, colW - 4 * pad);
        const h = lineH * (1 + lines.length) + pad;
        ctx.fillStyle = subjectColor(item.lesson.subject);
        ctx.fillRect(x + pad, cy, colW - 2 * pad, h);
        ctx.fillStyle = "#fff";
        ctx.fillText(item.title, x + 2 * pad, cy + 14);
        lines.forEach((ln, i) => ctx.fillText(ln, x + 2 * pad, cy + 14 + lineH * (i + 1)));
        cy += h + pad;
      }
    }
    y += rows[r];
  });
  return canvas;
}
