// The county scheduler's page: import, solve with progress, timetable grids, publish, re-plan.
import { api, download } from "./client.js";
import { renderGrid, gridTargets, subjectColor } from "./grid.js";

const $ = (id) => document.getElementById(id);
let plan = null;

function say(text, kind = "ok") {
  const el = $("message");
  el.textContent = text;
  el.className = kind;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k === "style") node.style.cssText = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

async function guarded(fn) {
  try { await fn(); } catch (err) { say(err.message, "error"); }
}

async function refreshCounty() {
  const c = await api("GET", "/api/schedule/county");
  $("county-summary").textContent =
    `${c.schools} schools · ${c.classrooms} classrooms · ${c.needs} needs (${c.demand} periods/week) · ` +
    `${c.offers} master lessons · ${c.plans} plans · ${c.instances} dated lessons`;
  return c;
}

async function importFiles() {
  const files = [...$("import-files").files];
  if (!files.length) throw new Error("choose the CSV files first");
  const payload = {};
  for (const f of files) payload[f.name.replace(/\.csv$/i, "")] = await f.text();
  const out = $("import-result");
  out.replaceChildren();
  try {
    const res = await api("POST", "/api/schedule/import",
      { files: payload, replace: $("import-replace").checked });
    out.append(el("p", {}, "Imported: " + Object.entries(res.counts).map(([k, n]) => `${k} ${n}`).join(", ")));
    say("Import done.");
  } catch (err) {
    if (err.rows) {
      const body = el("tbody");
      for (const r of err.rows) {
        body.append(el("tr", {}, el("td", {}, `${r.file}.csv`), el("td", {}, String(r.line)),
          el("td", {}, r.column), el("td", {}, r.message)));
      }
      out.append(el("table", { class: "errors" },
        el("thead", {}, el("tr", {}, el("th", {}, "file"), el("th", {}, "line"),
          el("th", {}, "column"), el("th", {}, "problem"))), body));
    }
    throw err;
  }
  await refreshCounty();
}

async function solve() {
  const limit = Number($("time-limit").value);
  const job = await api("POST", "/api/schedule/solve", {
    max_points: Number($("max-points").value), mode: $("mode").value,
    cross_county: $("cross-county").checked, time_limit_s: limit,
  });
  $("solve-progress").hidden = false;
  $("solve-button").disabled = true;
  say("Solving…");
  try {
    for (;;) {
      const j = await api("GET", `/api/schedule/jobs/${job.id}`);
      const pct = j.state === "running" ? Math.min(99, (100 * j.elapsed_s) / limit) : 100;
      $("solve-bar").value = pct;
      const p = j.progress || {};
      $("solve-status").textContent = j.state === "running"
        ? `${j.elapsed_s.toFixed(1)} s · ${p.served != null ? `about ${p.served} periods served` : "searching"}` +
          (p.parts > 1 ? ` · part ${p.part} of ${p.parts}` : "")
        : j.state;
      if (j.state === "failed") throw new Error(j.error);
      if (j.state === "done") {
        say(`Solved: ${j.served} of ${j.demand} periods served.`);
        await loadPlan(j.plan_id);
        break;
      }
      await new Promise((r) => setTimeout(r, 300));
    }
  } finally {
    $("solve-button").disabled = false;
  }
  await refreshCounty();
}

async function loadPlan(id) {
  plan = await api("GET", "/api/schedule/plan" + (id ? `?plan=${id}` : ""));
  const s = plan.plan.stats;
  $("plan-section").hidden = false;
  $("plan-title").textContent = `#${plan.plan.id} · ${plan.plan.status}`;
  const stat = (label, value) => el("div", { class: "stat" }, el("b", {}, String(value)), " ", label);
  $("plan-stats").replaceChildren(
    stat("served", `${s.served} / ${s.demand}`),
    stat("开齐率", `${(100 * s.served_ratio).toFixed(1)}%`),
    stat("at most", s.upper_bound),
    stat("gap", `${(100 * s.gap).toFixed(2)}%${s.optimal ? " (optimal)" : ""}`),
    stat("greedy baseline", s.greedy_served),
    stat("extra teachers", s.terms.extra_teachers ?? 0),
    stat("cross-county", s.terms.cross_county ?? 0),
    stat("busiest teacher", s.terms.max_load ?? 0),
    stat("changes to published", s.terms.changes ?? 0),
  );
  fillTargets();
  drawGrid();
  const pb = $("pairings").tBodies[0];
  pb.replaceChildren(...plan.pairings.map((p) => el("tr", {},
    el("td", {}, p.master_school_name), el("td", {}, p.point_school_name),
    el("td", {}, String(p.lessons)), el("td", {}, p.subjects.join(", ")))));
  $("unserved-count").textContent = `(${plan.unserved.length})`;
  $("unserved").replaceChildren(...plan.unserved.map((u) => el("li", {},
    el("b", {}, `${u.label} ${u.subject}`), ` — ${u.served} of ${u.required} period(s)`,
    el("ul", {}, ...u.reasons.map((r) => el("li", { class: "reason" }, r))))));
}

function fillTargets() {
  const sel = $("grid-target");
  const keep = sel.value;
  sel.replaceChildren(...gridTargets(plan, $("grid-kind").value).map(
    ([id, name]) => el("option", { value: id }, name)));
  if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
}

function drawGrid() {
  const { table, subjects } = renderGrid(plan, $("grid-kind").value, $("grid-target").value);
  $("grid").replaceChildren(table);
  $("legend").replaceChildren(...subjects.map((s) =>
    el("span", { style: `background:${subjectColor(s)}` }, s)));
}

async function publish() {
  const r = await api("POST", "/api/schedule/publish", { plan: plan.plan.id });
  say(`Published plan ${r.plan_id}: ${r.series} weekly lessons, ${r.instances} dated lessons ` +
      `(${r.changed_series.length} new or changed, ${r.removed_series.length} removed).`);
  await loadPlan(plan.plan.id);
  await refreshCounty();
}

async function replanDay() {
  const body = { dates: [$("replan-date").value] };
  if ($("replan-teacher").value) body.absent_teacher = $("replan-teacher").value.trim();
  if ($("replan-classroom").value) {
    body.classroom_id = $("replan-classroom").value.trim();
    body.downlink_mbps = $("replan-downlink").value;
  }
  const r = await api("POST", "/api/schedule/replan", body);
  const list = el("ul", {}, ...r.changes.map((c) => el("li", {}, `${c.date} · ${c.kind} · ${c.text}`)));
  $("replan-result").replaceChildren(
    el("p", {}, `${r.changes.length} change(s); ${r.served_after} of ${r.served_before} ` +
      `point-lessons kept (${r.solve_s} s).`), list);
  say("Re-planned.");
}

function useToken(token) {
  localStorage.setItem("tongke.scheduler.token", token);
  $("token").value = token;
}

function init() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) { useToken(fromHash); history.replaceState(null, "", location.pathname); }
  else $("token").value = localStorage.getItem("tongke.scheduler.token") || "";
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    useToken($("token").value.trim());
    guarded(async () => { await refreshCounty(); say("Token accepted."); await loadPlan().catch(() => {}); });
  });
  $("import-button").addEventListener("click", () => guarded(importFiles));
  $("solve-button").addEventListener("click", () => guarded(solve));
  $("publish-button").addEventListener("click", () => guarded(publish));
  $("export-button").addEventListener("click", () => guarded(() =>
    download(`/api/schedule/export.csv?plan=${plan.plan.id}`, `plan-${plan.plan.id}.csv`)));
  $("replan-button").addEventListener("click", () => guarded(replanDay));
  $("grid-kind").addEventListener("change", () => { fillTargets(); drawGrid(); });
  $("grid-target").addEventListener("change", drawGrid);
  if ($("token").value) {
    guarded(async () => {
      await refreshCounty();
      await loadPlan().catch(() => {});
    });
  }
}

init();
