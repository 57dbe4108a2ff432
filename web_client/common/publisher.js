// The publish PeerConnection (protocol §4): the browser offers one sendonly transceiver per
// source, waits for ICE gathering (no trickle), and sends `publish` with what each mid
// carries. Every change (a camera on, courseware shared or stopped) renegotiates with the
// whole list, which is how the server learns that a source went away.

import { gathered } from "./ice.js";

/**
 * Put `codec` ("h264" or "vp8") first in a video transceiver's preferences: the live
 * director cuts only between cameras of the program's codec (no re-encoding), so a
 * browser camera sends what the lesson's program uses when the browser can.
 */
function preferCodec(transceiver, codec) {
  if (!codec || !transceiver.setCodecPreferences || !RTCRtpSender.getCapabilities) return;
  const caps = RTCRtpSender.getCapabilities("video")?.codecs || [];
  const mime = `video/${codec}`.toLowerCase();
  const fits = (c) =>
    c.mimeType.toLowerCase() === mime &&
    (codec !== "h264" ||
      (/packetization-mode=1/.test(c.sdpFmtpLine || "") &&
        /profile-level-id=42e01f/i.test(c.sdpFmtpLine || "")));
  const first = caps.filter(fits);
  if (!first.length) return; // this browser cannot: the director leaves the camera out
  try {
    transceiver.setCodecPreferences([...first, ...caps.filter((c) => !fits(c))]);
  } catch (err) {
    console.warn("codec preference", err);
  }
}

export class PublishSession {
  /**
   * `request(message)` sends a signalling request and resolves with its reply;
   * `videoCodec()` names the codec video should prefer (the lesson's program codec).
   */
  constructor({ request, rtcConfig = { iceServers: [] }, videoCodec = () => null }) {
    this._request = request;
    this._videoCodec = videoCodec;
    this.pc = new RTCPeerConnection({ ...rtcConfig, bundlePolicy: "max-bundle" });
    this.sources = new Map(); // source -> {transceiver, track, kind, label}
    this._chain = Promise.resolve();
  }

  /** Publish `track` as `source` (replacing what that source sent before). */
  set(source, track, label = "") {
    return this._queue(async () => {
      const entry = this.sources.get(source);
      if (entry) {
        await entry.transceiver.sender.replaceTrack(track);
        entry.track = track;
        entry.transceiver.direction = "sendonly";
      } else {
        const transceiver = this.pc.addTransceiver(track, { direction: "sendonly" });
        if (track.kind === "video") preferCodec(transceiver, this._videoCodec());
        this.sources.set(source, { transceiver, track, kind: track.kind, label });
      }
      await this._negotiate();
    });
  }

  /** Stop publishing `source`; its transceiver stays for a later `set`. */
  remove(source) {
    return this._queue(async () => {
      const entry = this.sources.get(source);
      if (!entry || !entry.track) return;
      entry.track.stop();
      entry.track = null;
      await entry.transceiver.sender.replaceTrack(null);
      if (this.active().length) {
        await this._negotiate();
      } else {
        await this._request({ type: "unpublish", mids: [entry.transceiver.mid] });
      }
    });
  }

  active() {
    return [...this.sources.entries()].filter(([, e]) => e.track);
  }

  async _negotiate() {
    const offer = await this.pc.createOffer();
    await this.pc.setLocalDescription(offer);
    await gathered(this.pc);
    const tracks = this.active().map(([source, e]) => {
      const t = { mid: e.transceiver.mid, source, kind: e.kind };
      if (e.label) t.label = e.label;
      return t;
    });
    const reply = await this._request({
      type: "publish",
      sdp: this.pc.localDescription.sdp,
      tracks,
    });
    await this.pc.setRemoteDescription({ type: "answer", sdp: reply.sdp });
  }

  _queue(fn) {
    const run = this._chain.then(fn, fn);
    // One failure must not wedge the queue; the caller still sees it.
    this._chain = run.catch(() => {});
    return run;
  }

  close() {
    for (const [, e] of this.sources) if (e.track) e.track.stop();
    this.pc.close();
  }
}
