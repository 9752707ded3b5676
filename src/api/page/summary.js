// Summary: the summary lines of a clip, a camera or a time range, each
// with its keyframe.
import { json, showImage, getCameras, utc, el } from './api.js';
import { openFrame } from './frame.js';

let ready = null;

async function setup() {
  const cameras = await getCameras();
  document.getElementById('s-camera').append(...cameras.map((c) => el('option', { value: c, text: c })));
  // The clips: distinct sources of the stored segments.
  const all = await json('/api/segments?top=10000');
  const sources = [...new Set(all.map((s) => s.source))];
  document.getElementById('s-source').append(...sources.map((s) => el('option', { value: s, text: s })));
  document.getElementById('summary-form').addEventListener('submit', (e) => {
    e.preventDefault();
    render();
  });
}

async function render() {
  const p = new URLSearchParams();
  for (const [id, key] of [['s-camera', 'camera'], ['s-source', 'source']]) {
    const v = document.getElementById(id).value;
    if (v) p.set(key, v);
  }
  for (const [id, key] of [['s-from', 'from'], ['s-to', 'to']]) {
    const v = utc(document.getElementById(id).value);
    if (v) p.set(key, v);
  }
  const status = document.getElementById('summary-status');
  let segments;
  try {
    segments = await json(`/api/segments?${p}`);
  } catch (e) {
    status.textContent = `Failed: ${e.message}`;
    return;
  }
  status.textContent = `${segments.length} segment${segments.length === 1 ? '' : 's'}`;
  let group = null;
  const items = [];
  for (const s of segments) {
    const key = `${s.camera} · ${s.source}`;
    if (key !== group) {
      group = key;
      items.push(el('li', { class: 'summary-group', text: key }));
    }
    const img = el('img', { alt: `keyframe ${s.keyframe}`, width: 160, height: 90 });
    showImage(img, s.keyframe_image, s.keyframe_thumbnail);
    const frame = s.keyframe_thumbnail.replace(/\/thumb\.jpg$/, '');
    items.push(el('li', { class: 'summary-line' },
      el('button', { type: 'button', class: 'keyframe', 'aria-label': `open keyframe of ${s.line}`, onclick: () => openFrame(frame) }, img),
      el('span', { class: 'line', text: s.line })));
  }
  document.getElementById('summary-lines').replaceChildren(...items);
}

export function enter() {
  ready = ready || setup().catch((e) => { ready = null; throw e; });
  ready.then(render).catch((e) => {
    document.getElementById('summary-status').textContent = `Failed: ${e.message}`;
  });
}
