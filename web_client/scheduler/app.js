// The county scheduler's page: import, solve with progress, timetable grids and pictures,
// publish, re-plan. Chinese by default, English behind the switch (texts in i18n.js).
import { api, download, saveBlob } from "./client.js";
import { renderGrid, gridTargets, gridPicture, subjectColor } from "./grid.js";
import { applyTexts, lang, setLang, t } from "./i18n.js";

const $ = (id) => document.getElementById(id);
let plan = null;
let county = null;

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

function showCounty() {
  if (county) $("county-summary").textContent = t("county", county);
}

async function refreshCounty() {
  county = await api("GET", "/api/schedule/county");
  showCounty();
  return county;
}

async function importFiles() {
  const files = [...$("import-files").files];
  if (!files.length) throw new Error(t("chooseFiles"));
  const form = new FormData();
  for (const f of files) form.append(f.name.replace(/\.csv$/i, ""), f, f.name);
  form.append("replace", $("import-replace").checked ? "true" : "false");
  const out = $("import-result");
  out.replaceChildren();
  const encodings = (map) => t("encodings", {
    list: Object.entries(map || {}).map(([k, v]) => `${k}.csv ${v}`).join(", "),
  });
  try {
    const res = await api("POST", "/api/schedule/import", form);
    out.append(
      el("p", {}, t("imported", { counts: Object.entries(res.counts).map(([k, n]) => `${k} ${n}`).join(", ") })),
      el("p", { class: "muted", id: "import-encodings" }, encodings(res.encodings)));
    say(t("importDone"));
  } catch (err) {
    if (err.rows) {
      const body = el("tbody");
      for (const r of err.rows) {
        body.append(el("tr", {}, el("td", {}, `${r.file}.csv`), el("td", {}, String(r.line)),
          el("td", {}, r.column), el("td", {}, r.message)));
      }
      out.append(el("table", { class: "errors" },
        el("thead", {}, el("tr", {}, el("th", {}, t("thFile")), el("th", {}, t("thLine")),
          el("th", {}, t("thColumn")), el("th", {}, t("thProblem")))), body),
        el("p", { class: "muted" }, encodings(err.encodings)));
      // The headline in the page's language; the rows keep the server's wording.
      err.message = t("importFailed", { n: err.rows.length });
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
    bells: $("bells").value, bell_tolerance_min: Number($("bell-tolerance").value),
  });
  $("solve-progress").hidden = false;
  $("solve-button").disabled = true;
  say(t("solving"));
  try {
    for (;;) {
      const j = await api("GET", `/api/schedule/jobs/${job.id}`);
      const pct = j.state === "running" ? Math.min(99, (100 * j.elapsed_s) / limit) : 100;
      $("solve-bar").value = pct;
      const p = j.progress || {};
      $("solve-status").textContent = j.state === "running"
        ? `${j.elapsed_s.toFixed(1)} s · ${p.served != null ? t("aboutServed", { n: p.served }) : t("searching")}` +
          (p.parts > 1 ? ` · ${t("partOf", p)}` : "")
        : t("statuses")[j.state] || j.state;
      if (j.state === "failed") throw new Error(j.error);
      if (j.state === "done") {
        say(t("solved", j));
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

// A reason is {zh, en, ...}; plans stored by older versions hold English strings.
const reasonText = (r) => (typeof r === "string" ? r : r[lang()] || r.en);

function showPlan() {
  const s = plan.plan.stats;
  $("plan-section").hidden = false;
  $("plan-title").textContent = `#${plan.plan.id} · ${plan.plan.status}`;
  const stat = (label, value) => el("div", { class: "stat" }, el("b", {}, String(value)), " ", label);
  $("plan-stats").replaceChildren(
    stat(t("statServed"), `${s.served} / ${s.demand}`),
    stat(t("statRate"), `${(100 * s.served_ratio).toFixed(1)}%`),
    stat(t("statAtMost"), s.upper_bound),
    stat(t("statGap"), `${(100 * s.gap).toFixed(2)}%${s.optimal ? t("optimal") : ""}`),
    stat(t("statGreedy"), s.greedy_served),
    stat(t("statExtraTeachers"), s.terms.extra_teachers ?? 0),
    stat(t("statCrossCounty"), s.terms.cross_county ?? 0),
    stat(t("statBusiest"), s.terms.max_load ?? 0),
    stat(t("statChanges"), s.terms.changes ?? 0),
    stat(t("statOffBells"), s.terms.off_bells ?? 0),
    stat(t("statWall"), s.wall_s ?? "–"),
  );
  fillTargets();
  drawGrid();
  const pb = $("pairings").tBodies[0];
  pb.replaceChildren(...plan.pairings.map((p) => el("tr", {},
    el("td", {}, `${p.master_school_name} (${p.master_school})`),
    el("td", {}, `${p.point_school_name} (${p.point_school})`),
    el("td", {}, String(p.lessons)), el("td", {}, p.subjects.join(", ")))));
  $("unserved-count").textContent = `(${plan.unserved.length})`;
  $("unserved").replaceChildren(...plan.unserved.map((u) => el("li", {},
    el("b", {}, `${u.label} ${u.subject}`), ` — ${t("servedOf", u)}`,
    el("ul", {}, ...u.reasons.map((r) => el("li", {
      class: "reason", "data-lever": (r && r.lever) || "",
    }, reasonText(r)))))));
}

async function loadPlan(id) {
  plan = await api("GET", "/api/schedule/plan" + (id ? `?plan=${id}` : ""));
  showPlan();
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

async function picture() {
  const sel = $("grid-target");
  const name = sel.options[sel.selectedIndex] ? sel.options[sel.selectedIndex].textContent : "";
  const canvas = gridPicture(plan, $("grid-kind").value, sel.value, `${name} · #${plan.plan.id}`);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  saveBlob(blob, `timetable-${sel.value || "grid"}-${plan.plan.id}.png`);
}

async function publish() {
  const r = await api("POST", "/api/schedule/publish", { plan: plan.plan.id });
  say(t("published", { id: r.plan_id, series: r.series, instances: r.instances,
    changed: r.changed_series.length, removed: r.removed_series.length }));
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
  const zh = lang() === "zh";
  const list = el("ul", {}, ...r.changes.map((c) => el("li", { "data-kind": c.kind },
    `${c.date} · ${t("changeKinds")[c.kind] || c.kind} · ${(zh && c.text_zh) || c.text}`)));
  $("replan-result").replaceChildren(
    el("p", {}, t("replanResult", { n: r.changes.length, after: r.served_after,
      before: r.served_before, s: r.solve_s })), list);
  say(t("replanned"));
}

function useToken(token) {
  localStorage.setItem("tongke.scheduler.token", token);
  $("token").value = token;
}

function relabel() {
  applyTexts();
  showCounty();
  if (plan) showPlan();
}

function init() {
  applyTexts();
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) { useToken(fromHash); history.replaceState(null, "", location.pathname + location.search); }
  else $("token").value = localStorage.getItem("tongke.scheduler.token") || "";
  $("lang-switch").addEventListener("click", () => {
    setLang(lang() === "zh" ? "en" : "zh");
    relabel();
  });
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    useToken($("token").value.trim());
    guarded(async () => { await refreshCounty(); say(t("tokenAccepted")); await loadPlan().catch(() => {}); });
  });
  $("import-button").addEventListener("click", () => guarded(importFiles));
  $("solve-button").addEventListener("click", () => guarded(solve));
  $("publish-button").addEventListener("click", () => guarded(publish));
  $("export-button").addEventListener("click", () => guarded(() =>
    download(`/api/schedule/export.csv?plan=${plan.plan.id}`, `plan-${plan.plan.id}.csv`)));
  $("picture-button").addEventListener("click", () => guarded(picture));
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
