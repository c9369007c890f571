// The study browser: a hash router over three views. URLs carry UIDs only
// (#/, #/studies/{study}, #/studies/{study}/series/{series}) and the page title
// names the view, never the patient.

import { h, listen, replace, showError, typingInField } from './dom.js';
import { mountStudyList } from './studylist.js';
import { mountStudy } from './study.js';
import { mountViewer } from './viewer.js';

const UID = '([0-9.]{1,64})';
const ROUTES = [
  { pattern: new RegExp('^#?/?$'), view: 'list' },
  { pattern: new RegExp(`^#/studies/${UID}/?$`), view: 'study' },
  { pattern: new RegExp(`^#/studies/${UID}/series/${UID}/?$`), view: 'viewer' },
];
const TITLES = { list: 'Studies', study: 'Study', viewer: 'Viewer' };

let current = null; // {view, key, handle}

function parse(hash) {
  for (const route of ROUTES) {
    const match = route.pattern.exec(hash);
    if (match) return { view: route.view, study: match[1], series: match[2] };
  }
  return null;
}

function breadcrumb(route) {
  const items = [h('li', {}, route.view === 'list'
    ? h('span', { 'aria-current': 'page' }, 'Studies')
    : h('a', { href: '#/' }, 'Studies'))];
  if (route.study) {
    items.push(h('li', {}, route.view === 'study'
      ? h('span', { 'aria-current': 'page' }, 'Study')
      : h('a', { href: `#/studies/${route.study}` }, 'Study')));
  }
  if (route.series) items.push(h('li', {}, h('span', { 'aria-current': 'page' }, 'Viewer')));
  replace(document.getElementById('breadcrumb'), items);
}

function route() {
  const main = document.getElementById('main');
  const target = parse(window.location.hash);
  if (!target) {
    window.location.replace('#/');
    return;
  }
  showError('');
  // Switching series inside the viewer keeps the viewer (and its caches).
  if (current?.view === 'viewer' && target.view === 'viewer' && current.study === target.study) {
    current.handle.showSeries(target.series);
    current.series = target.series;
    return;
  }
  current?.handle?.destroy?.();
  document.title = `${TITLES[target.view]} · PACS`;
  document.body.dataset.view = target.view;
  breadcrumb(target);
  replace(main);
  const moveFocus = current !== null; // not on first load: keep the browser's own focus
  let handle;
  if (target.view === 'list') handle = mountStudyList(main);
  else if (target.view === 'study') handle = mountStudy(main, target.study);
  else handle = mountViewer(main, target.study, target.series);
  current = { ...target, handle };
  if (moveFocus && target.view !== 'viewer') main.focus({ preventScroll: true });
}

function setupHelp() {
  const dialog = document.getElementById('help');
  const open = () => { if (!dialog.open) dialog.showModal(); };
  document.getElementById('help-button').addEventListener('click', open);
  listen(document, 'keydown', (event) => {
    if (event.key === '?' && !typingInField(event) && !event.ctrlKey && !event.metaKey) {
      event.preventDefault();
      open();
    }
  });
}

window.addEventListener('hashchange', route);
window.addEventListener('unhandledrejection', (event) => {
  if (event.reason?.name === 'AbortError') return;
  showError(`Unexpected error: ${event.reason?.message || event.reason}`);
});
setupHelp();
route();
