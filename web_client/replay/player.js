// Replay player: every view in sync (one main, the others picture-in-picture), chapters,
// speed, resume where the student stopped, and the low rendition on a slow link.
import { describe } from './describe.js';
import { HlsSource } from './hls-source.js';
import { applyStatic, currentLang, setLang, translator } from '../common/i18n.js';
import { STRINGS } from './i18n.js';

const t = translator(STRINGS);
applyStatic(t);
document.getElementById('lang').onclick = () => {
  setLang(currentLang() === 'zh' ? 'en' : 'zh');
  location.reload();
};

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const base = params.get('src');

const state = {
  entry: null,
  mode: null,          // views | program | low | audio
  choice: params.get('mode') || 'auto',
  mainView: null,
  elements: [],        // [{el, source, start, view}]; source.lessonTime() is where el is
  master: null,        // the element that leads (the sound, or the only picture)
  masterItem: null,
  wantPlay: false,
  rate: 1,
  throughput: null,    // bits per second, smoothed
  samples: 0,
  stalledSince: null,
  switching: false,
};
window.replayPlayer = state;  // for the curious (and the tests): read-only by convention

const fmt = (t) => {
  t = Math.max(0, Math.floor(t || 0));
  const h = Math.floor(t / 3600), m = Math.floor((t % 3600) / 60), s = t % 60;
  return (h ? `${h}:${String(m).padStart(2, '0')}` : `${m}`) + `:${String(s).padStart(2, '0')}`;
};

function message(text, { error = false, actions = [] } = {}) {
  const box = $('message');
  box.replaceChildren(document.createTextNode(text + ' '));
  for (const [label, fn] of actions) {
    const b = document.createElement('button');
    b.textContent = label;
    b.onclick = () => { fn(); box.classList.add('hidden'); };
    box.append(b);
  }
  box.classList.toggle('error', error);
  box.classList.remove('hidden');
}

const resumeKey = () => `tongke:resume:${state.entry.lesson}`;
const videoViews = () => state.entry.views.filter((v) => v.kind === 'video');
const audioView = () => state.entry.views.find((v) => v.kind === 'audio');
const now = () => (state.masterItem ? state.masterItem.source.lessonTime() : 0);

function neededBps(mode) {
  const e = state.entry;
  if (mode === 'views') return e.views.reduce((sum, v) => sum + v.bandwidth, 0);
  if (mode === 'program') return e.program.bandwidth;
  if (mode === 'low') return e.low.bandwidth;
  return e.audio ? e.audio.bandwidth : 0;
}

function onThroughput(bps, bytes) {
  // Tiny responses say more about latency than bandwidth.
  if (bytes < 16 * 1024) return;
  state.throughput = state.throughput === null ? bps : 0.6 * state.throughput + 0.4 * bps;
  state.samples += 1;
  maybeStepDown();
}

function maybeStepDown(stalled = false) {
  if (state.choice !== 'auto' || state.switching) return;
  if (state.mode !== 'views' && state.mode !== 'program') return;
  const slow = state.samples >= 2 && state.throughput < 1.5 * neededBps(state.mode);
  if (slow || stalled) {
    const kbps = state.throughput ? Math.round(state.throughput / 1000) : '?';
    message(t('slow', { kbps }), { actions: [[t('tryViews'), () => {
              state.choice = 'views'; $('mode').value = 'views'; setMode('views'); }]] });
    setMode('low');
  }
}

function onError(text) {
  message(text, { error: true, actions: [[t('backToLessons'), () => { location.href = $('back').href; }]] });
}

function makeVideo(cls) {
  const el = document.createElement('video');
  el.playsInline = true;
  el.preload = 'auto';
  el.muted = true;  // sound comes from the audio track; keeps autoplay rules quiet
  el.className = cls;
  $('stage').append(el);
  return el;
}

function layoutViews() {
  let pipIndex = 0;
  for (const item of state.elements) {
    if (item.el.tagName !== 'VIDEO') continue;
    const main = item.view && item.view.id === state.mainView;
    item.el.className = main || !item.view ? 'main' : 'pip';
    item.el.style.bottom = main ? '' : `${8 + pipIndex * 24}%`;
    if (!main && item.view) pipIndex += 1;
  }
  for (const b of $('views').querySelectorAll('button')) {
    b.classList.toggle('current', b.dataset.view === state.mainView);
  }
}

function teardown() {
  for (const item of state.elements) {
    item.source.destroy();
    if (item.el !== $('audio')) item.el.remove();
  }
  state.elements = [];
  state.master = null;
}

async function setMode(mode, at = null) {
  state.switching = true;
  const t = at ?? now();
  const e = state.entry;
  teardown();
  state.masterItem = null;
  state.mode = mode;
  state.samples = 0;
  state.throughput = null;
  const opts = (start) => ({ start, onThroughput, onError });
  const add = (el, url, start, view = null) => {
    const source = new HlsSource(el, base + url, opts(start));
    state.elements.push({ el, source, start, view });
  };
  $('audio-only').classList.toggle('hidden', mode !== 'audio');
  $('views').classList.toggle('hidden', mode !== 'views');
  if (mode === 'views') {
    const videos = videoViews();
    if (!state.mainView || !videos.some((v) => v.id === state.mainView)) {
      state.mainView = (videos.find((v) => v.source === 'courseware') || videos[0]).id;
    }
    const a = audioView();
    if (a) add($('audio'), a.playlist, a.start_s);
    for (const v of videos) add(makeVideo('pip'), v.playlist, v.start_s, v);
  } else if (mode === 'audio') {
    add($('audio'), e.audio.playlist, 0);
  } else {
    const r = e[mode];
    const el = makeVideo('main');
    el.muted = false;
    add(el, r.playlist, r.start_s);
  }
  state.masterItem = state.elements[0];
  state.master = state.masterItem.el;
  layoutViews();
  try {
    await Promise.all(state.elements.map((i) => i.source.open()));
  } catch (err) {
    onError(t('cannotPlay', { reason: err.message }));
  }
  for (const { el, source, start } of state.elements) {
    el.playbackRate = state.rate;
    source.seekLesson(Math.max(t, start));
  }
  state.switching = false;
  if (state.wantPlay) playAll();
}

function playAll() {
  for (const { el, start } of state.elements) {
    if (now() >= start - 0.05) el.play().catch(() => {});
  }
}

function pauseAll() {
  for (const { el } of state.elements) el.pause();
}

function seekTo(t) {
  t = Math.min(Math.max(0, t), state.entry.duration_s - 0.1);
  for (const { source, start } of state.elements) source.seekLesson(Math.max(t, start));
}

// Keep the views together: the master (the audio, or the only element) leads; the others
// follow by nudging their rate, or by a jump when they are far off. When any element
// runs out of data everyone waits, so nobody drifts away while buffering.
function tick() {
  const m = state.master;
  if (!m || state.switching) return;
  const t = now();
  const active = state.elements.filter(({ start }) => t >= start - 0.05);
  const starving = active.some(({ el }) => el.readyState < 3 && !el.ended);
  $('buffering').classList.toggle('hidden', !(starving && state.wantPlay) && m.readyState >= 2);
  if (starving && state.wantPlay) {
    state.stalledSince ??= performance.now();
    if (performance.now() - state.stalledSince > 4000) {
      state.stalledSince = null;
      maybeStepDown(true);
    }
  } else {
    state.stalledSince = null;
  }
  for (const item of state.elements) {
    const { el, source, start } = item;
    if (el === m) continue;
    if (t < start - 0.05) {
      if (!el.paused) el.pause();
      continue;
    }
    const d = source.lessonTime() - t;
    if (Math.abs(d) > 0.4) {
      source.seekLesson(t);
    } else if (Math.abs(d) > 0.02) {
      // Proportional: a view 0.1 s off runs at 80% or 120% and is back within about half
      // a second (a fixed small nudge took seconds on a busy machine); followers are
      // muted video, so the rate change is not heard.
      el.playbackRate = state.rate * (1 - Math.max(-0.3, Math.min(0.3, d * 2)));
    } else if (el.playbackRate !== state.rate) {
      el.playbackRate = state.rate;
    }
  }
  for (const { el, start } of state.elements) {
    const shouldPlay = state.wantPlay && !starving && t >= start - 0.05 && !m.ended;
    if (shouldPlay && el.paused) el.play().catch(() => {});
    if (!shouldPlay && !el.paused) el.pause();
  }
  updateTime();
}

function updateTime() {
  const t = now();
  const d = state.entry.duration_s;
  if (!$('seek').dataset.dragging) $('seek').value = t;
  $('time').textContent = `${fmt(t)} / ${fmt(d)}`;
  const chapters = state.entry.chapters;
  let current = 0;
  chapters.forEach((c, i) => { if (c.t <= t + 0.25) current = i; });
  $('chapters').querySelectorAll('button').forEach((b, i) => b.classList.toggle('current', i === current));
  $('play').textContent = state.wantPlay ? t('pause') : t('play');
}

function buildUi() {
  const e = state.entry;
  document.title = t('playerTitle', { title: e.title });
  $('title').textContent = t('heading', { title: e.title, teacher: e.teacher, date: e.date });
  $('seek').max = e.duration_s;
  const list = $('chapters');
  list.replaceChildren(...e.chapters.map((c) => {
    const li = document.createElement('li');
    const b = document.createElement('button');
    b.dataset.t = c.t;
    b.innerHTML = `<span class="time"></span><span></span>`;
    b.firstChild.textContent = fmt(c.t);
    b.lastChild.textContent = c.title;
    b.onclick = () => { seekTo(c.t); updateTime(); };
    li.append(b);
    return li;
  }));
  $('views').replaceChildren(...videoViews().map((v) => {
    const b = document.createElement('button');
    b.textContent = v.label;
    b.dataset.view = v.id;
    b.onclick = () => { state.mainView = v.id; layoutViews(); };
    return b;
  }));
  $('stage').addEventListener('click', (ev) => {
    const item = state.elements.find((i) => i.el === ev.target && i.view);
    if (item && item.el.classList.contains('pip')) { state.mainView = item.view.id; layoutViews(); }
  });
  $('play').onclick = () => {
    state.wantPlay = !state.wantPlay;
    if (state.wantPlay) playAll(); else pauseAll();
    updateTime();
  };
  $('speed').onchange = () => {
    state.rate = parseFloat($('speed').value);
    for (const { el } of state.elements) el.playbackRate = state.rate;
  };
  $('mode').onchange = () => {
    state.choice = $('mode').value;
    let mode = state.choice === 'auto' ? 'views' : state.choice;
    if (mode === 'views' && !videoViews().length) mode = 'program';
    if (mode !== state.mode) setMode(mode);
  };
  const seek = $('seek');
  seek.addEventListener('input', () => { seek.dataset.dragging = '1'; $('time').textContent = `${fmt(seek.value)} / ${fmt(e.duration_s)}`; });
  seek.addEventListener('change', () => { delete seek.dataset.dragging; seekTo(parseFloat(seek.value)); });
  // Thumbnail preview above the seek bar.
  const th = e.thumbnails;
  const preview = $('preview');
  seek.addEventListener('pointermove', (ev) => {
    const r = seek.getBoundingClientRect();
    const t = ((ev.clientX - r.left) / r.width) * e.duration_s;
    const i = Math.min(th.count - 1, Math.max(0, Math.floor(t / th.interval_s)));
    preview.style.backgroundImage = `url("${base}${th.sprite}")`;
    preview.style.backgroundPosition = `-${(i % th.columns) * th.width}px -${Math.floor(i / th.columns) * th.height}px`;
    preview.style.left = `${Math.min(Math.max(0, ev.clientX - r.left - 80), r.width - 160)}px`;
    preview.classList.remove('hidden');
  });
  seek.addEventListener('pointerleave', () => preview.classList.add('hidden'));
  // Resume where the student stopped.
  setInterval(() => { if (state.wantPlay) localStorage.setItem(resumeKey(), String(now())); }, 2000);
  addEventListener('pagehide', () => { if (state.master) localStorage.setItem(resumeKey(), String(now())); });
  setInterval(tick, 200);
}

async function start() {
  if (!base) {
    onError(t('incompleteLink'));
    return;
  }
  let res;
  try {
    res = await fetch(base + 'replay.json');
  } catch (err) {
    onError(t('cannotReach', { reason: err.message }));
    return;
  }
  if (!res.ok) {
    $('title').textContent = t('unavailable');
    onError(await describe(res));
    $('buffering').classList.add('hidden');
    return;
  }
  state.entry = await res.json();
  buildUi();
  const saved = parseFloat(localStorage.getItem(resumeKey()) || '0');
  // Not at the very start or end: there, starting from the top is what the student wants.
  const resumeAt = saved > 5 && saved < state.entry.duration_s - 3 ? saved : 0;
  const conn = navigator.connection;
  const slowHint = conn && (conn.saveData || ['slow-2g', '2g'].includes(conn.effectiveType));
  let mode = state.choice === 'auto' ? (slowHint ? 'low' : 'views') : state.choice;
  if (mode === 'audio' && !state.entry.audio) mode = 'views';
  // VP8 cameras have no separate views (see replay.json views_skipped): show the program.
  if (mode === 'views' && !videoViews().length) mode = 'program';
  $('mode').value = state.choice;
  await setMode(mode, resumeAt);
  if (resumeAt) {
    message(t('resumed', { t: fmt(resumeAt) }), {
      actions: [[t('startOver'), () => { seekTo(0); updateTime(); }]],
    });
  }
  updateTime();
}

start();
