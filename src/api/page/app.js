// Views switched by the URL hash; each view module renders into its section.
import * as search from './search.js';
import * as timeline from './timeline.js';
import * as summary from './summary.js';
import * as streams from './streams.js';

const views = { search, timeline, summary, streams };
let current = null;

function show() {
  const name = location.hash.slice(1) in views ? location.hash.slice(1) : 'search';
  if (current === name) return;
  if (current) views[current].leave?.();
  current = name;
  for (const v of Object.keys(views)) {
    document.getElementById(`view-${v}`).hidden = v !== name;
  }
  for (const a of document.querySelectorAll('nav a')) {
    if (a.dataset.view === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  views[name].enter();
}

window.addEventListener('hashchange', show);
show();
