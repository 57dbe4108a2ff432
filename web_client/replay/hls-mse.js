// A small HLS (fMP4) player on Media Source Extensions, for the playlists our packager
// writes: VOD, one EXT-X-MAP init segment, EXTINF media segments. Chromium has no native
// HLS, and a full library would be 500 KB a phone has to fetch first; this is enough.

const AHEAD_S = 20;      // buffer this far ahead of the playhead
const BEHIND_S = 30;     // drop what is further behind than this

function waitEvent(target, name) {
  return new Promise((resolve) => target.addEventListener(name, resolve, { once: true }));
}

export function parsePlaylist(text, baseUrl, startS) {
  const lines = text.split(/\r?\n/);
  let init = null;
  let duration = null;
  let t = startS;
  const segments = [];
  for (const line of lines) {
    if (line.startsWith('#EXT-X-MAP:')) {
      const m = line.match(/URI="([^"]+)"/);
      if (m) init = new URL(m[1], baseUrl).href;
    } else if (line.startsWith('#EXTINF:')) {
      duration = parseFloat(line.slice(8));
    } else if (line && !line.startsWith('#') && duration !== null) {
      segments.push({ url: new URL(line, baseUrl).href, start: t, end: t + duration });
      t += duration;
      duration = null;
    }
  }
  if (!init || !segments.length) throw new Error('not a playable fMP4 playlist');
  return { init, segments, end: t };
}

export class HlsSource {
  /**
   * @param {HTMLMediaElement} media
   * @param {string} playlistUrl
   * @param {string} mime  e.g. 'video/mp4; codecs="avc1.42c01e"'
   * @param {{start?: number, onThroughput?: (bps:number)=>void, onError?: (msg:string)=>void}} opts
   */
  constructor(media, playlistUrl, mime, opts = {}) {
    this.media = media;
    this.url = playlistUrl;
    this.mime = mime;
    this.start = opts.start || 0;
    this.onThroughput = opts.onThroughput || (() => {});
    this.onError = opts.onError || ((m) => console.error(m));
    this.next = 0;
    this.busy = false;
    this.closed = false;
    this.ended = false;
    this.bytes = 0;
  }

  async open() {
    if (!window.MediaSource || !MediaSource.isTypeSupported(this.mime)) {
      throw new Error(`this browser cannot play ${this.mime}`);
    }
    const text = await this.fetchText(this.url);
    this.playlist = parsePlaylist(text, new URL(this.url, location.href).href, this.start);
    this.ms = new MediaSource();
    this.objectUrl = URL.createObjectURL(this.ms);
    this.media.src = this.objectUrl;
    await waitEvent(this.ms, 'sourceopen');
    this.sb = this.ms.addSourceBuffer(this.mime);
    this.ms.duration = this.playlist.end;
    await this.append(await this.fetchBytes(this.playlist.init));
    this.onSeek = () => { this.next = this.indexAt(this.media.currentTime); this.pump(); };
    this.media.addEventListener('seeking', this.onSeek);
    this.media.addEventListener('timeupdate', () => this.pump());
    this.timer = setInterval(() => this.pump(), 500);
    this.pump();
  }

  indexAt(t) {
    const segs = this.playlist.segments;
    // Start from what is already buffered around t, if anything.
    const b = this.sb.buffered;
    let from = t;
    for (let i = 0; i < b.length; i++) {
      if (b.start(i) <= t + 0.1 && b.end(i) >= t) from = b.end(i);
    }
    for (let i = 0; i < segs.length; i++) {
      if (segs[i].end > from + 0.05) return i;
    }
    return segs.length;
  }

  bufferedAhead(t) {
    const b = this.sb.buffered;
    for (let i = 0; i < b.length; i++) {
      if (b.start(i) <= t + 0.3 && b.end(i) > t) return b.end(i) - t;
    }
    return 0;
  }

  async pump() {
    if (this.busy || this.closed || !this.sb) return;
    const t = this.media.currentTime;
    if (this.next >= this.playlist.segments.length) {
      if (!this.ended && this.ms.readyState === 'open' && !this.sb.updating) {
        this.ended = true;
        this.ms.endOfStream();
      }
      return;
    }
    if (this.bufferedAhead(t) > AHEAD_S) return;
    this.busy = true;
    try {
      if (this.ended) { this.ended = false; }
      await this.evict(t);
      const seg = this.playlist.segments[this.next];
      const started = performance.now();
      const data = await this.fetchBytes(seg.url);
      const seconds = Math.max(0.001, (performance.now() - started) / 1000);
      this.onThroughput((data.byteLength * 8) / seconds, data.byteLength);
      if (this.closed) return;
      await this.append(data);
      // A seek during the fetch has already moved `next`; otherwise move on.
      if (this.playlist.segments[this.next] === seg) this.next += 1;
    } catch (err) {
      if (!this.closed) this.onError(err.message || String(err));
    } finally {
      this.busy = false;
    }
    if (!this.closed) setTimeout(() => this.pump(), 0);
  }

  async evict(t) {
    const b = this.sb.buffered;
    if (b.length && b.start(0) < t - BEHIND_S) {
      this.sb.remove(0, t - BEHIND_S);
      await waitEvent(this.sb, 'updateend');
    }
  }

  async append(data) {
    if (this.ms.readyState !== 'open') return;
    this.sb.appendBuffer(data);
    await waitEvent(this.sb, 'updateend');
  }

  async fetchBytes(url) {
    const res = await fetch(url);
    if (!res.ok) throw new Error(await describe(res));
    const buf = await res.arrayBuffer();
    this.bytes += buf.byteLength;
    return buf;
  }

  async fetchText(url) {
    const res = await fetch(url);
    if (!res.ok) throw new Error(await describe(res));
    return res.text();
  }

  destroy() {
    this.closed = true;
    clearInterval(this.timer);
    if (this.onSeek) this.media.removeEventListener('seeking', this.onSeek);
    this.media.removeAttribute('src');
    this.media.load();
    if (this.objectUrl) URL.revokeObjectURL(this.objectUrl);
  }
}

export async function describe(res) {
  try {
    const body = await res.json();
    if (body && body.error) return body.error.message;
  } catch (_) { /* not JSON */ }
  return `${res.status} ${res.statusText}`;
}
