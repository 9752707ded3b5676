// Streams: every stream's state and counters from /health, and what the
// store holds; refreshed every few seconds while shown.
import { json, el } from './api.js';

const EVERY_MS = 2000;
let timer = null;

async function refresh() {
  const status = document.getElementById('streams-status');
  let health;
  let store;
  try {
    [health, store] = await Promise.all([json('/health'), json('/api/streams')]);
  } catch (e) {
    status.textContent = `Failed: ${e.message}`;
    return;
  }
  const stored = new Map(store.frames);
  const mb = (store.disk_bytes / 1e6).toFixed(1);
  status.textContent = `Store ${health.store.writable ? 'writable' : `NOT writable: ${health.store.error}`}, `
    + `${mb} MB; caption backlog ${store.caption_backlog}; model ${health.model}`;
  const names = new Set([...health.streams.map((s) => s.name), ...stored.keys()]);
  const rows = [...names].map((name) => {
    const s = health.streams.find((x) => x.name === name);
    const state = s ? s.state + (s.retry_reason ? ` (${s.retry_reason})` : '') : 'not configured';
    return el('tr', { 'data-stream': name, class: s?.last_error ? 'failing' : '' },
      el('th', { scope: 'row', text: name }),
      el('td', { class: 'state', text: state }),
      el('td', { text: s ? String(s.frames) : '' }),
      el('td', { text: String(stored.get(name) ?? 0) }),
      el('td', { text: s ? String(s.dropped) : '' }),
      el('td', { class: 'last-error', text: s?.last_error || '' }));
  });
  document.querySelector('#streams-table tbody').replaceChildren(...rows);
}

export function enter() {
  refresh();
  timer = setInterval(refresh, EVERY_MS);
}

export function leave() {
  clearInterval(timer);
}
