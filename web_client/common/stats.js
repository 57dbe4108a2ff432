// Per-mid live receive statistics from RTCPeerConnection.getStats(): resolution, frame
// rate, bitrate and loss over the last interval (not since the start, which would hide a
// network that just went bad).

function midOf(report, trackMids) {
  if (report.mid != null) return String(report.mid);
  // Older Chromium builds leave `mid` out of inbound-rtp; the track id still maps it.
  return trackMids.get(report.trackIdentifier);
}

export class StatsSampler {
  constructor(pc) {
    this.pc = pc;
    this._previous = new Map(); // mid -> {timestamp, bytes, received, lost}
    this.lastInbound = {}; // the raw reports of the last sample, for tests and operators
    // Everything the connection received (media, the server's sender reports, ICE):
    // while it grows the path is alive, even when a publisher has gone quiet.
    this.transportBytes = 0;
  }

  /** Raw inbound-rtp reports by mid, plus the codec name: what tests assert on. */
  async inbound() {
    const report = await this.pc.getStats();
    const trackMids = new Map();
    for (const t of this.pc.getTransceivers()) {
      if (t.mid != null && t.receiver.track) trackMids.set(t.receiver.track.id, t.mid);
    }
    const byMid = {};
    let transportBytes = 0;
    report.forEach((s) => {
      if (s.type === "transport") transportBytes += s.bytesReceived || 0;
      if (s.type !== "inbound-rtp") return;
      const mid = midOf(s, trackMids);
      if (mid == null) return;
      const codec = s.codecId ? report.get(s.codecId) : undefined;
      byMid[mid] = { ...s, codecMimeType: codec ? codec.mimeType : "" };
    });
    this.transportBytes = transportBytes;
    return byMid;
  }

  /** Human-sized numbers per mid, with rates over the time since the last sample. */
  async sample() {
    const raw = await this.inbound();
    this.lastInbound = raw;
    const out = new Map();
    for (const [mid, s] of Object.entries(raw)) {
      const prev = this._previous.get(mid);
      const bytes = s.bytesReceived || 0;
      const received = s.packetsReceived || 0;
      const lost = Math.max(0, s.packetsLost || 0);
      let bitrateKbps = null;
      let lossPct = null;
      if (prev && s.timestamp > prev.timestamp) {
        const seconds = (s.timestamp - prev.timestamp) / 1000;
        bitrateKbps = ((bytes - prev.bytes) * 8) / 1000 / seconds;
        const expected = received - prev.received + (lost - prev.lost);
        lossPct = expected > 0 ? (100 * Math.max(0, lost - prev.lost)) / expected : 0;
      }
      this._previous.set(mid, { timestamp: s.timestamp, bytes, received, lost });
      out.set(mid, {
        kind: s.kind,
        codec: (s.codecMimeType || "").split("/")[1] || "",
        width: s.frameWidth || 0,
        height: s.frameHeight || 0,
        fps: s.framesPerSecond ?? null,
        framesDecoded: s.framesDecoded || 0,
        packetsReceived: received,
        packetsLost: lost,
        bitrateKbps,
        lossPct,
        audioLevel: s.audioLevel ?? null,
        jitterMs: s.jitter != null ? s.jitter * 1000 : null,
      });
    }
    for (const mid of this._previous.keys()) {
      if (!(mid in raw)) this._previous.delete(mid);
    }
    return out;
  }
}

export function formatStats(st) {
  if (!st) return "";
  const parts = [];
  if (st.kind === "video") {
    parts.push(st.width ? `${st.width}×${st.height}` : "—×—");
    parts.push(st.fps != null ? `${Math.round(st.fps)} fps` : "— fps");
  }
  parts.push(st.bitrateKbps != null ? `${Math.round(st.bitrateKbps)} kbps` : "— kbps");
  parts.push(st.lossPct != null ? `${st.lossPct.toFixed(1)}% loss` : "—% loss");
  if (st.codec) parts.push(st.codec);
  return parts.join(" · ");
}
