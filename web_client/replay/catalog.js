// Replay catalog: the lessons this student may watch, with search and filters.
import { describe } from './describe.js';
import { applyStatic, currentLang, setLang, translator } from '../common/i18n.js';
import { STRINGS } from './i18n.js';

const t = translator(STRINGS);
applyStatic(t);
document.title = t('catalogTitle');
document.getElementById('lang').onclick = () => {
  setLang(currentLang() === 'zh' ? 'en' : 'zh');
  location.reload();
};

const $ = (id) => document.getElementById(id);
const KEY = 'tongke:replay-token';
// A school's link carries the pass after '#' (never sent to the server, so it is in no
// log); old links had '?token='. Either way it is kept on this device and taken out of
// the address bar and the history at once.
const given = new URLSearchParams(location.hash.slice(1)).get('token')
  || new URLSearchParams(location.search).get('token');
if (given) {
  localStorage.setItem(KEY, given);
  history.replaceState(null, '', location.pathname);
}
let token = localStorage.getItem(KEY);
let facetsFilled = false;

const fmtMinutes = (s) => t('minutes', { n: Math.round(s / 60) });

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
    for (const v of values) select.append(new Option(name === 'grade' ? t('grade', { grade: v }) : v, v));
  }
}

function card(r) {
  const a = document.createElement('a');
  a.className = 'card';
  a.href = r.player_url;
  const img = document.createElement('img');
  img.src = r.poster_url;
  img.alt = t('posterAlt', { title: r.title });
  img.loading = 'lazy';
  const body = document.createElement('div');
  body.className = 'body';
  const title = document.createElement('div');
  title.className = 'title';
  title.textContent = r.title;
  const meta = document.createElement('div');
  meta.className = 'meta';
  meta.textContent = [r.teacher, r.subject, r.grade && t('grade', { grade: r.grade }),
    r.school_name || r.school].filter(Boolean).join(' · ');
  const meta2 = document.createElement('div');
  meta2.className = 'meta';
  meta2.textContent = `${r.date} · ${fmtMinutes(r.duration_s)} · ` +
    t('chaptersCount', { n: r.chapters }) + (r.public ? ` · ${t('public')}` : '');
  body.append(title, meta, meta2);
  a.append(img, body);
  if (!r.may_set_visibility) return a;
  // The lesson's teacher (or an admin) decides who may watch it.
  const wrap = document.createElement('div');
  wrap.className = 'cardwrap';
  const label = document.createElement('label');
  label.className = 'visibility';
  label.textContent = t('whoMayWatch') + ' ';
  const select = document.createElement('select');
  select.name = 'visibility';
  for (const v of ['schools', 'county', 'public']) select.append(new Option(t(`visibility_${v}`), v));
  select.value = r.visibility;
  select.onchange = async () => {
    const res = await fetch(`/api/replays/${encodeURIComponent(r.lesson)}/visibility`, {
      method: 'PUT',
      headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ visibility: select.value }),
    });
    if (res.ok) message(t('visibilitySaved', { title: r.title, who: t(`visibility_${select.value}`) }));
    else { message(await describe(res), true); select.value = r.visibility; return; }
    r.visibility = select.value;
  };
  label.append(select);
  wrap.append(a, label);
  return wrap;
}

async function search() {
  show($('loading'));
  const query = new URLSearchParams();
  for (const [k, v] of new FormData($('filters'))) if (v) query.set(k, v);
  let res;
  try {
    // Without a pass: the public lessons only.
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    res = await fetch(`/api/replays?${query}`, { headers });
  } catch (err) {
    show($('loading'), false);
    message(t('cannotReach', { reason: err.message }), true);
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
  show($('signout'), !!token);
  show($('signin'), !token);
  $('count').textContent = body.count ? t('count', { n: body.count }) : t('noMatch');
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

search();
