// Bilingual texts (Chinese first, English second): teaching points read Chinese, the
// project's operators and visitors often read English.

export const PHASES = {
  connecting: "正在连接服务器 / Connecting to the server",
  joining: "正在加入课堂 / Joining the lesson",
  media: "正在建立音视频连接 / Connecting audio and video",
  live: "直播中 / Live",
  waiting: "已加入，等待主讲教室开播 / Joined — waiting for a classroom to go live",
  unstable: "网络不稳定，正在恢复 / Network unstable, recovering",
  reconnecting: "连接已断开，正在重连 / Connection lost, reconnecting",
  error: "无法观看本课 / Cannot watch this lesson",
};

// Steps of the progress indicator, in order.
export const STEPS = [
  ["connecting", "连接 / Connect"],
  ["joining", "加入 / Join"],
  ["media", "音视频 / Media"],
  ["live", "直播 / Live"],
];

const ERRORS = {
  token_missing: [
    "链接中缺少课堂令牌",
    "This lesson link has no token. Please open the full link you were sent.",
  ],
  token_invalid: [
    "课堂链接无效",
    "This lesson link is not valid (the token is damaged or was issued by another server). Please ask for a new link.",
  ],
  token_expired: [
    "课堂链接已过期",
    "This lesson link has expired. Please ask the lesson organiser for a new link.",
  ],
  token_wrong_room: [
    "该链接属于另一节课",
    "This link is for a different lesson. Please use the link for this lesson.",
  ],
  token_role: ["该身份不能观看直播", "This role cannot watch a live lesson."],
  code_used: [
    "该课堂链接已被使用",
    "This lesson link was already opened once. Please ask the lesson organiser for a new link.",
  ],
  code_expired: [
    "课堂链接已过期",
    "This lesson link has expired. Please ask the lesson organiser for a new link.",
  ],
  code_invalid: [
    "课堂链接无效",
    "This lesson link is not valid. Please open the full link you were sent or ask for a new one.",
  ],
  rate_limited: [
    "请求过于频繁",
    "Too many attempts in a short time. Please wait a moment and try again.",
  ],
  forbidden: ["该身份不能观看直播", "This role cannot watch a live lesson."],
  replaced: [
    "已在其他窗口打开",
    "This classroom joined the lesson from another window or device, so this one was closed.",
  ],
  unknown_room: [
    "未找到该课堂",
    "This lesson is not open on the server: it has not started yet or has already ended.",
  ],
};

export function errorText(code, serverMessage) {
  const known = ERRORS[code];
  if (known) return { title: known[0], detail: known[1], code };
  return {
    title: "无法加入课堂",
    detail: serverMessage || "The server refused to join this lesson.",
    code,
  };
}

// Errors where trying again later with the same link can succeed.
export const RETRYABLE_ERRORS = new Set(["unknown_room"]);

export function reconnectText(seconds, attempt) {
  return `${PHASES.reconnecting}: ${seconds} 秒后第 ${attempt} 次重试 / retry ${attempt} in ${seconds} s`;
}

export function liveText(videoCount, audioCount) {
  return `${PHASES.live} · ${videoCount} 路画面 / video, ${audioCount} 路声音 / audio`;
}

export const TEXT = {
  waitingVideo: "等待画面 / Waiting for video",
  pausedBandwidth: "画面已暂停：网络带宽不足 / Paused: low bandwidth",
  pausedByYou: "画面已暂停 / Paused",
  noSources: "暂无画面：等待主讲教室或教学点开始推流 / Nothing is being published yet",
  enableSound: "点击开启声音 / Click to turn on sound",
  reconnectNow: "立即重连 / Reconnect now",
  retry: "重试 / Try again",
  fullscreen: "全屏 / Full screen",
  audioOnly: "音频 / Audio",
  viewOnly: "仅观看 / View only",
  participants: "参与教室 / Classrooms",
};
