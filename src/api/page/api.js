// API calls with the bearer token, and pictures fetched as blobs (an
// <img src> cannot send the header; a token in the URL would end up in
// logs and history).

const KEY = 'roadrep-token';
let asking = null;

/** Asks for the token once, however many calls got 401 meanwhile. */
function askToken(refused) {
  if (!asking) {
    asking = new Promise((resolve) => {
      const dialog = document.getElementById('token-dialog');
      const input = document.getElementById('token-input');
      document.getElementById('token-error').hidden = !refused;
      input.value = '';
      dialog.addEventListener('cancel', (e) => e.preventDefault());
      document.getElementById('token-form').onsubmit = () => {
        sessionStorage.setItem(KEY, input.value.trim());
        asking = null;
        resolve();
      };
      dialog.showModal();
      input.focus();
    });
  }
  return asking;
}

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

/** fetch() with the token; asks for it on 401 and tries again. */
export async function api(path, options = {}) {
  for (;;) {
    const headers = new Headers(options.headers || {});
    const token = sessionStorage.getItem(KEY);
    if (token) headers.set('Authorization', `Bearer ${token}`);
    const r = await fetch(path, { ...options, headers });
    if (r.status === 401) {
      const sent = token;
      // Another call may have got the token meanwhile.
      if (sessionStorage.getItem(KEY) === sent) await askToken(Boolean(sent));
      continue;
    }
    if (!r.ok) {
      let message = r.statusText;
      try { message = (await r.json()).error || message; } catch { /* not JSON */ }
      throw new ApiError(r.status, message);
    }
    return r;
  }
}

export async function json(path, options) {
  return (await api(path, options)).json();
}

/** Shows `urls[0]` (then the next on failure) in `img`, fetched with the token. */
export async function showImage(img, ...urls) {
  for (const url of urls.filter(Boolean)) {
    try {
      const blob = await (await api(url)).blob();
      const src = URL.createObjectURL(blob);
      // The decoded picture stays after the blob URL is revoked.
      img.addEventListener('load', () => URL.revokeObjectURL(src), { once: true });
      img.src = src;
      return;
    } catch { /* try the next */ }
  }
  img.classList.add('missing');
}

let labels = null;
let cameras = null;

/** The label sets: [{set, classes}]. */
export async function getLabels() {
  labels = labels || json('/api/labels');
  return labels;
}

/** Names of the cameras with frames in the store. */
export async function getCameras() {
  cameras = cameras || json('/api/streams').then((s) => s.frames.filter((f) => f[1] > 0).map((f) => f[0]));
  return cameras;
}

/** RFC 3339 of a datetime-local value read as UTC, or null. */
export function utc(value) {
  return value ? new Date(`${value}Z`).toISOString() : null;
}

/** "2026-11-20 08:00:03.5" from RFC 3339 (UTC shown as stored). */
export function shortTime(rfc3339) {
  return rfc3339.replace('T', ' ').replace(/\.?0*Z$/, '');
}

/** An element with attributes and children. */
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    // CSSOM, not a style attribute: the CSP allows no inline styles.
    else if (k === 'style') Object.assign(e.style, v);
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  e.append(...children.filter((c) => c !== null && c !== undefined));
  return e;
}

/** A stable colour per class index. */
export function colour(i) {
  return `hsl(${(i * 67 + 200) % 360} 65% 50%)`;
}
