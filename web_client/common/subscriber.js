// The subscribe PeerConnection (protocol §4): the server offers, we answer once ICE
// gathering is complete (no trickle), and the latest `tracks` list says what each mid
// carries. A transceiver can be re-used for another source, so everything is keyed by mid.

import { gathered } from "./ice.js";

/**
 * Events (EventTarget):
 *   "tracks"      detail: Map mid -> {info, track}  whenever the mapping changes
 *   "connection"  detail: pc.connectionState        whenever it changes
 */
export class SubscribeSession extends EventTarget {
  constructor({ send, rtcConfig = { iceServers: [] } }) {
    super();
    this._send = send;
    this.pc = new RTCPeerConnection({ ...rtcConfig, bundlePolicy: "max-bundle" });
    this.tracks = new Map(); // mid -> {info, track}
    this.negotiations = 0;
    this._chain = Promise.resolve();
    this._closed = false;
    this.pc.addEventListener("connectionstatechange", () => {
      this.dispatchEvent(new CustomEvent("connection", { detail: this.pc.connectionState }));
    });
  }

  /** Apply a `subscribe_offer`; offers are answered strictly in order. */
  handleOffer(message) {
    const run = () => this._answer(message);
    this._chain = this._chain.then(run, run);
    return this._chain;
  }

  /** Apply a `tracks` message (mapping changed without renegotiation). */
  handleTracks(message) {
    // Queued behind any offer in flight so that a mid it names already exists.
    const run = () => this._applyTracks(message.tracks || []);
    this._chain = this._chain.then(run, run);
    return this._chain;
  }

  async _answer(message) {
    if (this._closed) return;
    await this.pc.setRemoteDescription({ type: "offer", sdp: message.sdp });
    const answer = await this.pc.createAnswer();
    await this.pc.setLocalDescription(answer);
    await gathered(this.pc);
    if (this._closed) return;
    this._send({ type: "subscribe_answer", sdp: this.pc.localDescription.sdp });
    this.negotiations += 1;
    this._applyTracks(message.tracks || []);
  }

  _applyTracks(list) {
    if (this._closed) return;
    const receivers = new Map();
    for (const t of this.pc.getTransceivers()) {
      if (t.mid != null) receivers.set(t.mid, t.receiver.track);
    }
    const next = new Map();
    for (const info of list) {
      if (info.mid == null || !info.active) continue;
      const track = receivers.get(String(info.mid));
      if (track) next.set(String(info.mid), { info, track });
    }
    this.tracks = next;
    this.dispatchEvent(new CustomEvent("tracks", { detail: next }));
  }

  close() {
    this._closed = true;
    this.pc.close();
  }
}
