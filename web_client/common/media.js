// Small helpers shared by the consoles: show a MediaStreamTrack, capture local devices.

/** Attach `track` to a <video>/<audio> element, re-using its stream when it is the same. */
export function attach(el, track) {
  const current = el.srcObject && el.srcObject.getTracks()[0];
  if (current === track) return;
  el.srcObject = track ? new MediaStream([track]) : null;
  if (track) el.play().catch(() => {});
}

export function videoElement({ muted = true } = {}) {
  const v = document.createElement("video");
  v.autoplay = true;
  v.playsInline = true;
  v.muted = muted;
  return v;
}

/** A labelled video tile (.tile > .video > video, .meta > .name) for the consoles' grids. */
export function videoTile() {
  const el = document.createElement("div");
  el.className = "tile";
  const box = document.createElement("div");
  box.className = "video";
  box.append(videoElement());
  const meta = document.createElement("div");
  meta.className = "meta";
  const name = document.createElement("span");
  name.className = "name";
  meta.append(name);
  el.append(box, meta);
  return el;
}

export function audioElement() {
  const a = document.createElement("audio");
  a.autoplay = true;
  return a;
}

/** Camera and microphone at classroom sizes (a point's uplink is 2-5 Mbit/s). */
export async function openCamera() {
  return navigator.mediaDevices.getUserMedia({
    video: { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 25 } },
    audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  });
}

export async function openScreen() {
  return navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 10 } }, audio: false });
}

export function errorReason(err) {
  return (err && (err.name || err.message)) || String(err);
}
