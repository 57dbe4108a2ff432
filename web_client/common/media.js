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
