// Every user-facing string of the scheduler page, Chinese first (county schedulers read
// Chinese), English behind the language switch. `t(key, vars)` fills {name} slots.

const TEXT = {
  zh: {
    title: "Tongke 排课 · 县域同步课堂排课",
    tokenLabel: "排课令牌",
    tokenPlaceholder: "由 `tongke schedule token` 生成",
    useToken: "使用",
    langSwitch: "English",
    importHeading: "1 · 导入县域数据",
    importHelp: "按类型命名的 CSV 文件：schools.csv、classrooms.csv、teachers.csv、classes.csv、" +
      "bells.csv、busy.csv、needs.csv、offers.csv、calendar.csv。可用 UTF-8 或 GBK（Excel 默认）保存。" +
      "只要有一行出错，就什么都不导入。",
    replace: "清空县域数据后重新导入",
    importButton: "导入",
    solveHeading: "2 · 求解",
    maxPoints: "每节课最多教学点",
    modeLabel: "主讲课时间",
    modeFixed: "固定（按中心校课表）",
    modeMovable: "可调到主讲班的空闲节次",
    modesHelp: "固定：主讲课留在中心校课表的原位置，教学点只能在这些时间加入。" +
      "可调：主讲课可以挪到主讲班的自习等空闲节次，往往能多开课，但中心校要改课表。",
    bellsLabel: "教学点作息",
    bellsHard: "必须落在教学点的一节课内",
    bellsSoft: "允许跨课间（扣分）",
    toleranceLabel: "最多跨入课间（分钟）",
    crossCounty: "允许跨县结对",
    timeLimit: "时间上限（秒，含解释）",
    solveButton: "求解",
    planHeading: "3 · 方案",
    show: "查看",
    kindSchool: "中心校",
    kindClassroom: "录播教室",
    kindPoint: "教学点",
    publishButton: "发布",
    exportButton: "导出 CSV",
    pictureButton: "下载课表图片",
    pairingsHeading: "结对",
    thMaster: "中心校",
    thPoint: "教学点",
    thLessons: "每周节数",
    thSubjects: "学科",
    unservedHeading: "未完全满足的需求",
    replanHeading: "4 · 调整某一天",
    date: "日期",
    absentTeacher: "请假教师编号",
    or: "或",
    pointClassroom: "教学点教室编号",
    downlinkNow: "当前下行带宽（Mbit/s）",
    replanButton: "重新安排",
    county: "{schools} 所学校 · {classrooms} 间教室 · {needs} 项需求（每周 {demand} 节）· " +
      "{offers} 节主讲课 · {plans} 个方案 · {instances} 节已发布课",
    chooseFiles: "请先选择 CSV 文件",
    imported: "已导入：{counts}",
    importDone: "导入完成。",
    importFailed: "没有导入任何数据：{n} 行有错（见下表），改好后重新导入。",
    encodings: "编码：{list}",
    thFile: "文件",
    thLine: "行",
    thColumn: "列",
    thProblem: "问题",
    solving: "正在求解…",
    searching: "搜索中",
    aboutServed: "约 {n} 节已排",
    partOf: "第 {part}/{parts} 部分",
    solved: "求解完成：已排 {served} / {demand} 节。",
    statServed: "已排节数",
    statRate: "开齐率",
    statAtMost: "最多可排",
    statGap: "差距",
    optimal: "（最优）",
    statGreedy: "贪心基线",
    statExtraTeachers: "额外教师",
    statCrossCounty: "跨县",
    statBusiest: "最忙教师",
    statChanges: "相对已发布的改动",
    statOffBells: "跨课间",
    statWall: "用时（秒）",
    servedOf: "已排 {served} / {required} 节",
    time: "时间",
    noLessons: "没有远程课",
    grade: "{grade}年级",
    published: "已发布方案 {id}：{series} 个每周课，{instances} 节具体课（{changed} 个新增或改动，{removed} 个删除）。",
    replanned: "已重新安排。",
    replanResult: "{n} 处改动；保留 {after} / {before} 个教学点课次（{s} 秒）。",
    tokenAccepted: "令牌可用。",
    days: ["周一", "周二", "周三", "周四", "周五"],
    statuses: { running: "运行中", done: "完成", failed: "失败" },
    changeKinds: {
      "lesson cancelled": "取消", "point removed": "教学点退出",
      "point added": "教学点加入", "lesson added": "新增",
    },
  },
  en: {
    title: "Tongke scheduling · County shared timetable",
    tokenLabel: "Scheduler token",
    tokenPlaceholder: "from `tongke schedule token`",
    useToken: "Use",
    langSwitch: "中文",
    importHeading: "1 · Import the county",
    importHelp: "CSV files named after their kind: schools.csv, classrooms.csv, teachers.csv, " +
      "classes.csv, bells.csv, busy.csv, needs.csv, offers.csv, calendar.csv, saved as UTF-8 or " +
      "GBK (what Excel writes). One bad row and nothing is imported.",
    replace: "start the county over",
    importButton: "Import",
    solveHeading: "2 · Solve",
    maxPoints: "Points per lesson",
    modeLabel: "Master lessons",
    modeFixed: "stay fixed (central timetable)",
    modeMovable: "may move to free periods",
    modesHelp: "Fixed: master lessons stay where the central school's timetable puts them; " +
      "points join at those times. Movable: master lessons may move into free periods of the " +
      "master class (self-study), which often serves more, but the central school's timetable changes.",
    bellsLabel: "Point bells",
    bellsHard: "inside one of the point's periods",
    bellsSoft: "may straddle a break (at a cost)",
    toleranceLabel: "Into a break at most (min)",
    crossCounty: "allow cross-county",
    timeLimit: "Time limit (s, explanations included)",
    solveButton: "Solve",
    planHeading: "3 · Plan",
    show: "Show",
    kindSchool: "school",
    kindClassroom: "master classroom",
    kindPoint: "teaching point",
    publishButton: "Publish",
    exportButton: "Export CSV",
    pictureButton: "Download timetable picture",
    pairingsHeading: "Pairings",
    thMaster: "Master school",
    thPoint: "Teaching point",
    thLessons: "Lessons / week",
    thSubjects: "Subjects",
    unservedHeading: "Not fully served",
    replanHeading: "4 · Re-plan a day",
    date: "Date",
    absentTeacher: "Absent teacher id",
    or: "or",
    pointClassroom: "Point classroom id",
    downlinkNow: "Downlink now (Mbit/s)",
    replanButton: "Re-plan",
    county: "{schools} schools · {classrooms} classrooms · {needs} needs ({demand} periods/week) · " +
      "{offers} master lessons · {plans} plans · {instances} dated lessons",
    chooseFiles: "choose the CSV files first",
    imported: "Imported: {counts}",
    importDone: "Import done.",
    importFailed: "nothing imported: {n} bad row(s) (below); fix them and import again.",
    encodings: "Encodings: {list}",
    thFile: "file",
    thLine: "line",
    thColumn: "column",
    thProblem: "problem",
    solving: "Solving…",
    searching: "searching",
    aboutServed: "about {n} periods served",
    partOf: "part {part} of {parts}",
    solved: "Solved: {served} of {demand} periods served.",
    statServed: "served",
    statRate: "served share",
    statAtMost: "at most",
    statGap: "gap",
    optimal: " (optimal)",
    statGreedy: "greedy baseline",
    statExtraTeachers: "extra teachers",
    statCrossCounty: "cross-county",
    statBusiest: "busiest teacher",
    statChanges: "changes to published",
    statOffBells: "straddling breaks",
    statWall: "wall time (s)",
    servedOf: "{served} of {required} period(s)",
    time: "time",
    noLessons: "no remote lessons",
    grade: "grade {grade}",
    published: "Published plan {id}: {series} weekly lessons, {instances} dated lessons ({changed} new or changed, {removed} removed).",
    replanned: "Re-planned.",
    replanResult: "{n} change(s); {after} of {before} point-lessons kept ({s} s).",
    tokenAccepted: "Token accepted.",
    days: ["Mon", "Tue", "Wed", "Thu", "Fri"],
    statuses: { running: "running", done: "done", failed: "failed" },
    changeKinds: {},
  },
};

const KEY = "tongke.scheduler.lang";

export function lang() {
  const asked = new URLSearchParams(location.search).get("lang");
  if (asked === "zh" || asked === "en") return asked;
  return localStorage.getItem(KEY) === "en" ? "en" : "zh";
}

export function setLang(value) {
  localStorage.setItem(KEY, value);
  const url = new URL(location.href);
  url.searchParams.delete("lang");
  history.replaceState(null, "", url.pathname + url.search + url.hash);
}

export function t(key, vars = {}) {
  const value = TEXT[lang()][key] ?? TEXT.zh[key] ?? key;
  if (typeof value !== "string") return value;
  return value.replace(/\{(\w+)\}/g, (_, name) => String(vars[name] ?? ""));
}

// Texts marked in the page with data-i18n (content) and data-i18n-placeholder.
export function applyTexts(root = document) {
  document.documentElement.lang = lang() === "zh" ? "zh-CN" : "en";
  document.title = t("title");
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-placeholder]")) {
    el.placeholder = t(el.dataset.i18nPlaceholder);
  }
}
