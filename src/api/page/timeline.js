// Timeline: per camera, one strip per label set coloured by its top class
// over time, and the segments with their keyframes; zoom from all the
// footage down to a minute, and pan.
import { json, showImage, getLabels, getCameras, shortTime, el, colour } from './api.js';
import { openFrame } from './frame.js';

let ready = null;
// The shown window, ms since the epoch; null until the first load.
let view = null;

async function setup() {
  const cameras = await getCameras();
  const select = document.getElementById('t-camera');
  select.replaceChildren(...cameras.map((c) => el('option', { value: c, text: c })));
  select.addEventListener('change', () => { view = null; render(); });
  document.getElementById('t-zoom').addEventListener('change', zoom);
  document.getElementById('t-prev').addEventListener('click', () => pan(-0.5));
  document.getElementById('t-next').addEventListener('click', () => pan(0.5));
}

function zoom() {
  const secs = Number(document.getElementById('t-zoom').value);
  if (!secs || !view) { view = null; render(); return; }
  const mid = (view.from + view.to) / 2;
  view = { from: mid - secs * 500, to: mid + secs * 500 };
  render();
}

function pan(fraction) {
  if (!view) return;
  const d = (view.to - view.from) * fraction;
  view = { from: view.from + d, to: view.to + d };
  render();
}

const iso = (ms) => new Date(ms).toISOString();

async function render() {
  const camera = document.getElementById('t-camera').value;
  const status = document.getElementById('timeline-range');
  if (!camera) { status.textContent = 'No cameras in the store yet.'; return; }
  const labels = await getLabels();
  const range = view ? `&from=${iso(view.from)}&to=${iso(view.to)}` : '';
  const cam = encodeURIComponent(camera);
  let runs;
  let segments;
  try {
    [runs, segments] = await Promise.all([
      Promise.all(labels.map(({ set }) => json(`/api/timeline?camera=${cam}&set=${encodeURIComponent(set)}${range}`)
        .catch(() => []))),
      json(`/api/segments?camera=${cam}${range}&top=200`),
    ]);
  } catch (e) {
    status.textContent = `Failed: ${e.message}`;
    return;
  }
  if (!view) {
    // All the footage: the extent of what is stored.
    const times = runs.flat().flatMap((r) => [Date.parse(r.start), Date.parse(r.end)]);
    if (!times.length) { status.textContent = 'No frames in this range.'; return; }
    const [a, b] = [Math.min(...times), Math.max(...times)];
    const pad = Math.max(1000, (b - a) * 0.02);
    view = { from: a - pad, to: b + pad };
  }
  status.textContent = `${shortTime(iso(view.from))} – ${shortTime(iso(view.to))}`;
  const span = view.to - view.from;
  const pos = (ms) => `${Math.min(100, Math.max(0, ((ms - view.from) / span) * 100))}%`;
  const strips = labels.map(({ set, classes }, i) => {
    const list = runs[i];
    const bars = list.map((r, j) => {
      const start = Date.parse(r.start);
      // Its last frame is a sample: the run lasts one sampling step more,
      // up to the next run (not over a gap in the footage).
      const last = Date.parse(r.end);
      const step = r.frames > 1 ? (last - start) / (r.frames - 1) : 500;
      const next = j + 1 < list.length ? Date.parse(list[j + 1].start) : Infinity;
      const end = Math.min(next, last + step);
      const left = pos(start);
      const width = `calc(${pos(end)} - ${left})`;
      return el('span', {
        class: 'run',
        title: `${r.class}: ${shortTime(r.start)} – ${shortTime(r.end)}, ${r.frames} frames, ${(r.mean_score * 100).toFixed(0)}%`,
        style: { left, width, background: colour(classes.indexOf(r.class)) },
      });
    });
    const seen = [...new Set(list.map((r) => r.class))];
    return el('div', { class: 'strip-row' },
      el('span', { class: 'strip-name', text: set }),
      el('div', { class: 'strip', role: 'img', 'aria-label': `${set}: ${seen.join(', ')}` }, ...bars),
      el('span', { class: 'legend' }, ...seen.map((c) => el('span', { class: 'chip' },
        el('span', { class: 'swatch', style: { background: colour(classes.indexOf(c)) } }), c))));
  });
  document.getElementById('strips').replaceChildren(...strips);
  document.getElementById('segments').replaceChildren(...segments.map(segmentCard));
}

/** A segment: keyframe picture and summary line; opens the keyframe. */
export function segmentCard(s) {
  const img = el('img', { alt: `keyframe ${s.keyframe}`, width: 256, height: 144 });
  showImage(img, s.keyframe_image, s.keyframe_thumbnail);
  const frame = s.keyframe_thumbnail.replace(/\/thumb\.jpg$/, '');
  return el('button', { type: 'button', class: 'hit segment', onclick: () => openFrame(frame) },
    img,
    el('span', { class: 'meta' }, el('span', { class: 'time', text: shortTime(s.start) })),
    el('span', { class: 'line', text: s.line }));
}

export function enter() {
  ready = ready || setup().catch((e) => { ready = null; throw e; });
  ready.then(render).catch((e) => {
    document.getElementById('timeline-range').textContent = `Failed: ${e.message}`;
  });
}
