// A classroom device's report (agent_state, media_server/agent_state.py) as one line for
// the master console's tiles and the supervisor view. Each page passes its translator;
// DEVICE_STRINGS holds the device_* / copy_* / problem_* / source_* strings it uses.

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

/** The strings `deviceText` needs, for each page's table (`...DEVICE_STRINGS.zh`). */
export const DEVICE_STRINGS = {
  zh: {
      source_teacher_camera: "教师摄像头",
      source_board_camera: "板书摄像头",
      source_courseware: "课件",
      source_classroom_mic: "教室麦克风",
      source_point_camera: "教学点摄像头",
      source_point_mic: "教学点麦克风",
      device_line: "终端：CPU {cpu}% · 上行估计 {up} · 安全副本{copy}",
      device_stale: "终端 {age} 秒没有报告状态",
      copy_recording: "录制中（{mb} MB）",
      copy_stopped: "已停止",
      copy_off: "未开启",
      problem_no_signal: "{source}无信号",
      problem_starting: "{source}正在启动",
      problem_stopped: "{source}已停止",
      problem_safety_copy_stopped: "安全副本停止：{reason}",
      problem_cpu_busy: "CPU 繁忙",
  },
  en: {
      source_teacher_camera: "Teacher camera",
      source_board_camera: "Board camera",
      source_courseware: "Courseware",
      source_classroom_mic: "Classroom mic",
      source_point_camera: "Point camera",
      source_point_mic: "Point mic",
      device_line: "Device: CPU {cpu}% · uplink est. {up} · safety copy {copy}",
      device_stale: "No device report for {age} s",
      copy_recording: "recording ({mb} MB)",
      copy_stopped: "stopped",
      copy_off: "off",
      problem_no_signal: "{source}: no signal",
      problem_starting: "{source}: starting",
      problem_stopped: "{source}: stopped",
      problem_safety_copy_stopped: "safety copy stopped: {reason}",
      problem_cpu_busy: "CPU busy",
  },
};
