// Replay catalog: the lessons this student may watch, with search and filters.
import { describe } from './hls-mse.js';

const $ = (id) => document.getElementById(id);
const KEY = 'tongke:replay-token';
const params = new URLSearchParams(location.search);
if (params.get('token')) {
  localStorage.setItem(KEY, params.get('token'));
  history.replaceState(null, '', location.pathname);  // keep the token out of history
}
let token = localStorage.getItem(KEY);
let facetsFilled = false;

const fmtMinutes = (s) => `${Math.round(s / 60)} min`;

function show(el, on = true) { el.classList.toggle('hidden', !on); }

function message(text, error = false) {
  $('message').textContent = text;
  $('message').classList.toggle('error', error);
  show($('message'), !!text);
}

function fillFacets(facets) {
  if (facetsFilled) return;
  facetsFilled = true;
  const form = $('filters');
  for (const [name, values] of Object.entries(facets)) {
    const select = form.elements[name];
    for (const v of values) select.append(new Option(name === 'grade' ? `Grade ${v}` : v, v));
  }
}

function card(r) {
  const a = document.createElement('a');
  a.className = 'card';
  a.href = r.player_url;
  const img = document.createElement('img');
  img.src = r.poster_url;
  img.alt = `${r.title} (picture from the lesson)`;
  img.loading = 'lazy';
  const body = document.createElement('div');
  body.className = 'body';
  const title = document.createElement('div');
  title.className = 'title';
  title.textContent = r.title;
  const meta = document.createElement('div');
  meta.className = 'meta';
  meta.textContent = `${r.teacher} · ${r.subject} · grade ${r.grade} · ${r.school}`;
  const meta2 = document.createElement('div');
  meta2.className = 'meta';
  meta2.textContent = `${r.date} · ${fmtMinutes(r.duration_s)} · ${r.chapters} chapters` +
    (r.public ? ' · public' : '');
  body.append(title, meta, meta2);
  a.append(img, body);
  return a;
}

async function search() {
  show($('loading'));
  const query = new URLSearchParams();
  for (const [k, v] of new FormData($('filters'))) if (v) query.set(k, v);
  let res;
  try {
    res = await fetch(`/api/replays?${query}`, { headers: { Authorization: `Bearer ${token}` } });
  } catch (err) {
    show($('loading'), false);
    message(`Cannot reach the server: ${err.message}`, true);
    return;
  }
  show($('loading'), false);
  if (res.status === 401 || res.status === 403) {
    localStorage.removeItem(KEY);
    token = null;
    message(await describe(res), true);
    signin();
    return;
  }
  if (!res.ok) { message(await describe(res), true); return; }
  const body = await res.json();
  message('');
  fillFacets(body.facets);
  show($('filters'));
  show($('signout'));
  $('count').textContent = body.count ? `${body.count} lesson(s)` : 'No lessons match.';
  $('results').replaceChildren(...body.replays.map(card));
}

function signin() {
  show($('signin'));
  show($('filters'), false);
  show($('loading'), false);
  $('results').replaceChildren();
  $('count').textContent = '';
}

$('signin').addEventListener('submit', (ev) => {
  ev.preventDefault();
  token = $('token').value.trim();
  if (!token) return;
  localStorage.setItem(KEY, token);
  show($('signin'), false);
  search();
});
$('signout').onclick = () => { localStorage.removeItem(KEY); location.reload(); };
let pending;
$('filters').addEventListener('input', () => { clearTimeout(pending); pending = setTimeout(search, 250); });
$('filters').addEventListener('submit', (ev) => { ev.preventDefault(); search(); });

if (token) search(); else signin();
