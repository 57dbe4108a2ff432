// The grid of tiles: one per active subscribed mid, showing its video (or an audio
// meter), its source label and classroom name, and live receive statistics.

import { formatStats } from "../common/stats.js";
import { TEXT } from "./i18n.js";

// The teacher first, then what the teacher shows, then the rooms; audio last.
const SOURCE_ORDER = [
  "teacher_camera",
  "courseware",
  "board_camera",
  "point_camera",
  "classroom_mic",
  "point_mic",
];

function orderOf(info) {
  const i = SOURCE_ORDER.indexOf(info.source);
  const rank = i < 0 ? SOURCE_ORDER.length : i;
  return (info.kind === "audio" ? 100 : 0) + rank;
}

const SVG_NS = "http://www.w3.org/2000/svg";

// Inline icons: emoji glyphs render as boxes on classroom PCs without an emoji font.
function icon(className, pathData) {
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("class", className);
  const path = document.createElementNS(SVG_NS, "path");
  path.setAttribute("d", pathData);
  path.setAttribute("fill", "none");
  path.setAttribute("stroke", "currentColor");
  path.setAttribute("stroke-width", "2");
  path.setAttribute("stroke-linecap", "round");
  path.setAttribute("stroke-linejoin", "round");
  svg.append(path);
  return svg;
}
const FULLSCREEN_PATH = "M4 9V4h5M20 9V4h-5M4 15v5h5M20 15v5h-5";
const SPEAKER_PATH = "M4 9v6h4l5 4V5L8 9H4zM16.5 8.5a5 5 0 0 1 0 7M19 6a8.5 8.5 0 0 1 0 12";

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

class Tile {
  constructor(mid, track, onAutoplayBlocked) {
    this.mid = mid;
    this.track = track;
    this.kind = track.kind;
    this.root = el("figure", `tile tile-${this.kind}`);
    this.root.dataset.mid = mid;
    this.root.setAttribute("role", "group");

    this.stage = el("div", "tile-stage");
    if (this.kind === "video") {
      // Muted: the sound comes on its own audio track, and muted video may always autoplay.
      this.media = el("video");
      this.media.muted = true;
      this.media.playsInline = true;
      this.wait = el("div", "tile-wait", TEXT.waitingVideo);
      this.wait.setAttribute("role", "status");
      this.media.addEventListener("loadeddata", () => this.root.classList.add("has-frames"));
      const full = el("button", "tile-full");
      full.append(icon("", FULLSCREEN_PATH));
      full.type = "button";
      full.title = TEXT.fullscreen;
      full.setAttribute("aria-label", TEXT.fullscreen);
      full.addEventListener("click", () => this.root.requestFullscreen?.());
      this.paused = el("div", "tile-paused");
      this.paused.setAttribute("role", "status");
      this.stage.append(this.media, this.wait, this.paused, full);
    } else {
      this.media = el("audio");
      this.meter = el("div", "tile-meter");
      this.meterBar = el("div", "tile-meter-bar");
      this.meter.append(this.meterBar);
      this.meter.setAttribute("role", "meter");
      this.meter.setAttribute("aria-valuemin", "0");
      this.meter.setAttribute("aria-valuemax", "100");
      this.meter.setAttribute("aria-valuenow", "0");
      this.stage.append(icon("tile-audio-icon", SPEAKER_PATH), this.meter, this.media);
    }
    this.media.autoplay = true;
    this.media.srcObject = new MediaStream([track]);
    this.media.play().catch((err) => {
      // Only the autoplay policy needs the user; an AbortError (a newer load) does not.
      if (err.name === "NotAllowedError") onAutoplayBlocked(this.media);
    });

    const caption = el("figcaption", "tile-caption");
    this.labelEl = el("span", "tile-label");
    this.nameEl = el("span", "tile-name");
    caption.append(this.labelEl, this.nameEl);
    this.statsEl = el("div", "tile-stats");
    this.root.append(this.stage, caption, this.statsEl);
  }

  update(info) {
    this.info = info;
    const label = info.label || info.source || "";
    const name = info.name || info.classroom || "";
    this.labelEl.textContent = label;
    this.nameEl.textContent = name;
    this.nameEl.title = info.classroom || "";
    this.root.dataset.track = info.track || "";
    this.root.dataset.source = info.source || "";
    this.root.setAttribute("aria-label", `${label} — ${name}`);
    this.root.style.order = String(orderOf(info));
  }

  /** What the server sends of this source: {layer, paused, reason} or undefined. */
  setAllocation(allocation) {
    this.allocation = allocation;
    const paused = Boolean(allocation && allocation.paused);
    this.root.classList.toggle("is-paused", paused);
    this.root.dataset.paused = paused ? allocation.reason || "paused" : "";
    this.root.dataset.layer = allocation && allocation.layer ? allocation.layer : "";
    if (this.paused) {
      this.paused.textContent =
        paused && allocation.reason === "bandwidth" ? TEXT.pausedBandwidth : TEXT.pausedByYou;
    }
  }

  setStats(st) {
    const layer = this.allocation && this.allocation.layer;
    const text = formatStats(st);
    this.statsEl.textContent = layer && this.kind === "video" ? `${text} · ${layer}` : text;
    if (this.meter && st && st.audioLevel != null) {
      // audioLevel is linear 0..1; a square root reads closer to what the ear hears.
      const pct = Math.round(Math.sqrt(st.audioLevel) * 100);
      this.meterBar.style.width = `${pct}%`;
      this.meter.setAttribute("aria-valuenow", String(pct));
    }
  }

  remove() {
    this.media.srcObject = null;
    this.root.remove();
  }
}

export class TileGrid {
  constructor(container, { onAutoplayBlocked }) {
    this.container = container;
    this.onAutoplayBlocked = onAutoplayBlocked;
    this.tiles = new Map(); // mid -> Tile
  }

  /** Show exactly these tracks (Map mid -> {info, track}). */
  update(tracks) {
    for (const [mid, tile] of this.tiles) {
      const entry = tracks.get(mid);
      if (!entry || entry.track !== tile.track) {
        tile.remove();
        this.tiles.delete(mid);
      }
    }
    for (const [mid, { info, track }] of tracks) {
      let tile = this.tiles.get(mid);
      if (!tile) {
        tile = new Tile(mid, track, this.onAutoplayBlocked);
        this.tiles.set(mid, tile);
        this.container.append(tile.root);
      }
      tile.update(info);
    }
    this._applyAllocation();
  }

  setStats(statsByMid) {
    for (const [mid, tile] of this.tiles) tile.setStats(statsByMid.get(mid));
  }

  /** Apply an `allocation` message: which sources run at which layer, which are paused. */
  setAllocation(message) {
    this.allocation = new Map(message.tracks.map((t) => [t.track, t]));
    this._applyAllocation();
  }

  _applyAllocation() {
    if (!this.allocation) return;
    for (const tile of this.tiles.values()) {
      tile.setAllocation(this.allocation.get(tile.info && tile.info.track));
    }
  }

  clear() {
    this.update(new Map());
  }

  counts() {
    let video = 0;
    let audio = 0;
    for (const tile of this.tiles.values()) {
      if (tile.kind === "video") video += 1;
      else audio += 1;
    }
    return { video, audio };
  }
}
