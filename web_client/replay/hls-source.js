// One HLS playlist into one media element: the browser's own HLS where it has it (Safari,
// iOS), else hls.js on Media Source Extensions (Chromium and Firefox have no native HLS).
// hls.js is vendored (vendor/README.md): nothing is loaded from the internet.
import Hls from './vendor/hls.light.min.js';

const AHEAD_S = 20;   // buffer this far ahead of the playhead
const BEHIND_S = 30;  // keep this much behind it (seeking back a little stays instant)
const RETRIES = 3;    // network errors survived before the player is told

export class HlsSource {
  /**
   * @param {HTMLMediaElement} media
   * @param {string} playlistUrl
   * @param {{start?: number, onThroughput?: (bps:number, bytes:number)=>void,
   *          onError?: (msg:string)=>void}} opts
   * `start`: where the playlist begins on the lesson clock. hls.js (and native HLS) put a
   * playlist's first segment at media time 0, so the element runs `offset` seconds
   * behind the lesson: lesson time = element time + offset.
   */
  constructor(media, playlistUrl, opts = {}) {
    this.media = media;
    this.url = playlistUrl;
    this.offset = opts.start || 0;
    this.onThroughput = opts.onThroughput || (() => {});
    this.onError = opts.onError || ((m) => console.error(m));
    this.hls = null;
    this.retries = 0;
    this.mediaRecoveries = 0;
  }

  /** Resolves when the playlist is known and the element can be seeked. */
  open() {
    if (Hls.isSupported()) return this.openHlsJs();
    if (this.media.canPlayType('application/vnd.apple.mpegurl')) {
      this.media.src = this.url;
      return new Promise((resolve, reject) => {
        this.media.addEventListener('loadedmetadata', resolve, { once: true });
        this.media.addEventListener('error', () => reject(new Error('native HLS failed')), { once: true });
      });
    }
    return Promise.reject(new Error('this browser can play neither HLS nor Media Source Extensions'));
  }

  openHlsJs() {
    const hls = this.hls = new Hls({
      maxBufferLength: AHEAD_S,
      backBufferLength: BEHIND_S,
      enableWorker: false,   // fMP4 is passed through, not transmuxed: no worker needed
      autoStartLoad: true,
      capLevelToPlayerSize: false,
    });
    hls.on(Hls.Events.FRAG_LOADED, (_, data) => {
      const s = data.frag.stats;
      const ms = Math.max(1, s.loading.end - s.loading.start);
      this.onThroughput((s.loaded * 8 * 1000) / ms, s.loaded);
    });
    return new Promise((resolve, reject) => {
      let ready = false;
      hls.on(Hls.Events.MANIFEST_PARSED, () => { ready = true; resolve(); });
      hls.on(Hls.Events.ERROR, (_, data) => {
        if (!data.fatal) return;
        const message = describeHlsError(data);
        if (!ready) { reject(new Error(message)); return; }
        const status = data.response && data.response.code;
        if (data.type === Hls.ErrorTypes.NETWORK_ERROR && status !== 403 && this.retries < RETRIES) {
          this.retries += 1;
          setTimeout(() => { if (this.hls) this.hls.startLoad(); }, 1000 * this.retries);
        } else if (data.type === Hls.ErrorTypes.MEDIA_ERROR && this.mediaRecoveries < 1) {
          this.mediaRecoveries += 1;
          hls.recoverMediaError();
        } else {
          this.onError(message);
        }
      });
      hls.on(Hls.Events.FRAG_BUFFERED, () => { this.retries = 0; });
      hls.loadSource(this.url);
      hls.attachMedia(this.media);
    });
  }

  /** The lesson time the element is at. */
  lessonTime() {
    return this.media.currentTime + this.offset;
  }

  /** Put the element at lesson time `t` (before its start: at its start). */
  seekLesson(t) {
    this.media.currentTime = Math.max(0, t - this.offset);
  }

  destroy() {
    if (this.hls) {
      this.hls.destroy();
      this.hls = null;
    }
    this.media.removeAttribute('src');
    this.media.load();
  }
}

function describeHlsError(data) {
  const status = data.response && data.response.code;
  if (status === 403) {
    // Our server explains in JSON (an expired or bad link); hls.js keeps the body.
    try {
      const body = JSON.parse(data.response.data || data.response.text || '');
      if (body && body.error) return body.error.message;
    } catch (_) { /* not JSON */ }
  }
  return status ? `${status} (${data.details})` : String(data.details || data.type);
}
