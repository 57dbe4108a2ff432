// A classroom device's report (agent_state, media_server/agent_state.py) as one line for
// the master console's tiles and the supervisor view. Each page passes its translator;
// its string table has the device_* / copy_* / problem_* keys.

function mbit(bps) {
  return bps == null ? "—" : `${(bps / 1e6).toFixed(1)} Mbit/s`;
}

/** {text, bad} for a device summary (null: no report yet). */
export function deviceText(d, t) {
  if (!d) return { text: "", bad: false };
  if (d.stale) return { text: t("device_stale", { age: Math.round(d.age_s) }), bad: true };
  const cpu = d.cpu.process_pct != null ? Math.round(d.cpu.process_pct) : "—";
  const copy = t(`copy_${d.safety_copy.state}`, {
    mb: Math.round((d.safety_copy.bytes || 0) / 1e6),
    reason: d.safety_copy.reason || "",
  });
  const problems = d.problems.map((p) =>
    t(`problem_${p.kind}`, {
      source: p.source ? t(`source_${p.source}`) : "",
      reason: p.reason || "",
    }),
  );
  const line = t("device_line", { cpu, up: mbit(d.uplink_estimate_bps), copy });
  return {
    text: problems.length ? `${line} · ⚠ ${problems.join("；")}` : line,
    bad: problems.length > 0,
  };
}
