// The frame view: the larger picture, every label set's scores as bars,
// its segment and its neighbours.
import { json, showImage, shortTime, el, colour } from './api.js';

const dialog = () => document.getElementById('frame-dialog');
let opener = null;

export async function openFrame(url) {
  const d = dialog();
  if (!d.open) {
    opener = document.activeElement;
    d.showModal();
  }
  const body = document.getElementById('frame-body');
  body.replaceChildren(el('p', { class: 'status', text: 'Loading…' }));
  let f;
  try {
    f = await json(url);
  } catch (e) {
    body.replaceChildren(el('p', { class: 'error', text: e.message }));
    return;
  }
  document.getElementById('frame-title').textContent = `${f.camera} · ${shortTime(f.time)}`;
  const big = el('img', { class: 'large', alt: `${f.camera} at ${f.time}` });
  showImage(big, f.image, f.keyframe, f.thumbnail);
  const sets = f.scores.map((s) => el('section', { class: 'set' },
    el('h3', { text: s.set }),
    ...s.scores.map(([c, p], i) => el('div', { class: 'bar-row' },
      el('span', { class: 'label', text: c }),
      el('span', { class: 'bar-track' },
        el('span', { class: 'bar', style: { width: `${(p * 100).toFixed(1)}%`, background: colour(i) } })),
      el('span', { class: 'value', text: `${(p * 100).toFixed(1)}%` })))));
  const seg = f.segment
    ? el('p', { class: 'segment-line', text: f.segment.line })
    : el('p', { class: 'status', text: 'No segment stored yet.' });
  const neighbours = f.neighbours.map((n) => {
    const img = el('img', { alt: shortTime(n.time), width: 128, height: 72 });
    showImage(img, n.thumbnail);
    return el('button', { type: 'button', class: 'neighbour', onclick: () => openFrame(n.url) },
      img, el('span', { text: shortTime(n.time).slice(11) }));
  });
  body.replaceChildren(
    el('div', { class: 'frame-main' }, big,
      el('div', { class: 'scores' }, ...sets)),
    el('h3', { text: 'Segment' }), seg,
    el('p', { class: 'source', text: `${f.source} @ ${f.pts_s.toFixed(2)} s` }),
    el('h3', { text: 'Neighbours' }), el('div', { class: 'neighbours' }, ...neighbours));
}

function close() {
  dialog().close();
}

dialog().addEventListener('close', () => {
  document.getElementById('frame-body').replaceChildren();
  opener?.focus();
});
document.getElementById('frame-close').addEventListener('click', close);
