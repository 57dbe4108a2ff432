// Timetable grids: weekdays across, lesson start times down, one colour per subject.
const DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri"];
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
  return plan.schools.filter((s) => want.includes(s.kind)).map((s) => [s.id, s.name]);
}

function lessonsFor(plan, kind, target) {
  const withPoints = plan.lessons.filter((l) => l.points.length);
  if (kind === "classroom") return withPoints.filter((l) => l.master_classroom === target);
  if (kind === "point") return withPoints.filter((l) => l.points.some((p) => p.school === target));
  return withPoints.filter((l) => l.master_school === target);
}

export function renderGrid(plan, kind, target) {
  const lessons = lessonsFor(plan, kind, target);
  const times = [...new Set(lessons.map((l) => `${l.start}–${l.end}`))].sort();
  const table = document.createElement("table");
  table.className = "grid";
  table.dataset.kind = kind;
  table.dataset.target = target || "";
  const head = table.createTHead().insertRow();
  head.append(Object.assign(document.createElement("th"), { textContent: "time" }));
  for (const d of DAYS) head.append(Object.assign(document.createElement("th"), { textContent: d }));
  const body = table.createTBody();
  if (!times.length) {
    const cell = body.insertRow().insertCell();
    cell.colSpan = 6;
    cell.textContent = "no remote lessons";
  }
  const subjects = new Set();
  for (const t of times) {
    const row = body.insertRow();
    const tc = row.insertCell();
    tc.className = "time";
    tc.textContent = t;
    for (let wd = 1; wd <= 5; wd++) {
      const cell = row.insertCell();
      for (const l of lessons.filter((x) => x.weekday === wd && `${x.start}–${x.end}` === t)) {
        subjects.add(l.subject);
        const box = document.createElement("div");
        box.className = "lesson" + (l.moved ? " moved" : "");
        box.style.background = subjectColor(l.subject);
        box.dataset.subject = l.subject;
        box.title = `${l.master_class_name} · ${l.teacher_name}\n` +
          l.points.map((p) => p.name).join("\n");
        const who = kind === "point"
          ? `${l.master_class_name} · ${l.teacher_name}`
          : l.points.map((p) => p.name).join(", ");
        box.innerHTML = "";
        const title = document.createElement("div");
        title.textContent = `${l.subject} · grade ${l.grade}`;
        const sub = document.createElement("div");
        sub.className = "who";
        sub.textContent = who;
        box.append(title, sub);
        cell.append(box);
      }
    }
  }
  return { table, subjects: [...subjects].sort() };
}
