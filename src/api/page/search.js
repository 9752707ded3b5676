// Search: text or image query with filters; a grid of hits.
import { json, showImage, getLabels, getCameras, utc, shortTime, el } from './api.js';
import { openFrame } from './frame.js';

let ready = null;
let image = null;

async function setup() {
  const [cameras, labels] = await Promise.all([getCameras(), getLabels()]);
  const cams = document.getElementById('f-cameras');
  for (const c of cameras) {
    cams.append(el('label', { class: 'check' },
      el('input', { type: 'checkbox', value: c, name: 'camera' }), ` ${c}`));
  }
  const tags = document.getElementById('f-tags');
  for (const { set, classes } of labels) {
    const select = el('select', { 'data-set': set, 'aria-label': set },
      el('option', { value: '', text: 'any' }),
      ...classes.map((c) => el('option', { value: `${set}:${c}`, text: c })));
    select.addEventListener('change', run);
    tags.append(el('label', {}, `${set} `, select));
  }
  const form = document.getElementById('search-form');
  form.addEventListener('submit', (e) => { e.preventDefault(); run(); });
  const file = document.getElementById('image-file');
  file.addEventListener('change', () => choose(file.files[0]));
  const drop = document.getElementById('drop');
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    choose(e.dataTransfer.files[0]);
  });
  drop.addEventListener('keydown', (e) => { if (e.key === 'Enter') file.click(); });
  document.getElementById('search-clear').addEventListener('click', () => choose(null));
}

function choose(f) {
  image = f || null;
  document.getElementById('drop-text').textContent =
    image ? `Image: ${image.name}` : 'Drop an image here, or choose one';
  if (!image) document.getElementById('image-file').value = '';
  if (image) run();
}

/** The filters as a query string. */
function params() {
  const p = new URLSearchParams({ top: '48' });
  const cams = [...document.querySelectorAll('#f-cameras input:checked')].map((i) => i.value);
  if (cams.length) p.set('camera', cams.join(','));
  const from = utc(document.getElementById('f-from').value);
  const to = utc(document.getElementById('f-to').value);
  if (from) p.set('from', from);
  if (to) p.set('to', to);
  const tags = [...document.querySelectorAll('#f-tags select')].map((s) => s.value).filter(Boolean);
  if (tags.length) p.set('tag', tags.join(','));
  return p;
}

let generation = 0;

async function run() {
  const mine = ++generation;
  const status = document.getElementById('search-status');
  const p = params();
  const q = document.getElementById('q').value.trim();
  const min = document.getElementById('f-min-score').value;
  let hits;
  status.textContent = 'Searching…';
  try {
    if (image) {
      if (min) p.set('min_score', min);
      hits = (await json(`/api/search/image?${p}`, { method: 'POST', body: image })).hits;
    } else if (q) {
      p.set('q', q);
      if (min) p.set('min_score', min);
      hits = (await json(`/api/search?${p}`)).hits;
    } else {
      // No query: browse the frames that pass the filters, in time order.
      hits = await json(`/api/frames?${p}`);
    }
  } catch (e) {
    if (mine === generation) status.textContent = `Search failed: ${e.message}`;
    return;
  }
  if (mine !== generation) return;
  status.textContent = `${hits.length} frame${hits.length === 1 ? '' : 's'}`;
  const grid = document.getElementById('results');
  grid.replaceChildren(...hits.map(card));
}

/** One result: a focusable button (Enter opens it). */
export function card(hit) {
  const img = el('img', { alt: `${hit.camera} at ${hit.time}`, width: 256, height: 144 });
  showImage(img, hit.thumbnail, hit.image);
  const tags = Object.entries(hit.tags)
    .sort((a, b) => b[1][1] - a[1][1])
    .slice(0, 3)
    .map(([, [c, p]]) => el('span', { class: 'chip', text: `${c} ${Math.round(p * 100)}%` }));
  return el('button', { type: 'button', class: 'hit', onclick: () => openFrame(hit.url) },
    img,
    el('span', { class: 'meta' },
      el('span', { class: 'time', text: shortTime(hit.time) }),
      el('span', { class: 'camera', text: hit.camera }),
      hit.score === undefined ? null : el('span', { class: 'score', text: hit.score.toFixed(3) })),
    el('span', { class: 'tags' }, ...tags));
}

export function enter() {
  ready = ready || setup().then(run).catch((e) => {
    ready = null;
    document.getElementById('search-status').textContent = `Failed: ${e.message}`;
  });
}
