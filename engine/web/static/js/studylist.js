// The study list: a QIDO-RS search form, a sortable table and limit/offset paging.
// The search lives in memory only (never in the URL or in storage): the page URL
// and title must not carry patient data.

import { T, compareValues, formatDate, formatTime, num, text, textAll, toDA } from './dicom.js';
import { searchStudies } from './dicomweb.js';
import {
  announce, dialogOpen, h, listen, replace, showError, typingInField,
} from './dom.js';

const MODALITIES = ['CT', 'MR', 'CR', 'DX', 'MG', 'US', 'PT', 'NM', 'XA', 'RF', 'OT', 'SR'];
const PAGE_SIZES = [25, 50, 100];

const COLUMNS = [
  { key: 'name', label: 'Patient name', value: (ds) => text(ds, T.PatientName) },
  { key: 'id', label: 'Patient ID', value: (ds) => text(ds, T.PatientID) },
  { key: 'birth', label: 'Birth date', value: (ds) => formatDate(text(ds, T.PatientBirthDate)) },
  { key: 'date', label: 'Study date', value: (ds) => `${text(ds, T.StudyDate)}${text(ds, T.StudyTime)}`,
    display: (ds) => [formatDate(text(ds, T.StudyDate)), formatTime(text(ds, T.StudyTime))].filter(Boolean).join(' ') },
  { key: 'modality', label: 'Modality', value: (ds) => textAll(ds, T.ModalitiesInStudy) },
  { key: 'description', label: 'Description', value: (ds) => text(ds, T.StudyDescription) },
  { key: 'accession', label: 'Accession', value: (ds) => text(ds, T.AccessionNumber) },
  { key: 'series', label: 'Series', numeric: true, value: (ds) => num(ds, T.NumberOfStudyRelatedSeries) },
  { key: 'images', label: 'Images', numeric: true, value: (ds) => num(ds, T.NumberOfStudyRelatedInstances) },
];

const INCLUDE = [T.StudyDescription, T.ModalitiesInStudy, T.NumberOfStudyRelatedSeries,
  T.NumberOfStudyRelatedInstances, T.PatientBirthDate, T.PatientSex, T.StudyTime];

// Kept while the page lives, so coming back from a study shows the same list.
const state = {
  form: { name: '', id: '', from: '', to: '', modality: '', accession: '' },
  sort: { key: 'date', descending: true },
  limit: 25,
  offset: 0,
  results: null, // the page shown, as returned
  more: false,
  focusedStudy: null,
};

/** The QIDO-RS query parameters for a search form. */
export function queryParameters(form) {
  const params = {};
  // "Family, Given" (as the list shows names) is "Family^Given" in DICOM.
  const name = form.name.trim().replace(/\s*,\s*/g, '^');
  if (name) params.PatientName = /[*?]/.test(name) ? name : `${name}*`;
  if (form.id.trim()) params.PatientID = form.id.trim();
  if (form.accession.trim()) params.AccessionNumber = form.accession.trim();
  if (form.modality) params.ModalitiesInStudy = form.modality;
  const from = toDA(form.from);
  const to = toDA(form.to);
  if (from || to) params.StudyDate = from && from === to ? from : `${from}-${to}`;
  return params;
}

export function mountStudyList(root) {
  const controller = { abort: null };
  const cleanups = [];

  const field = (key, label, attrs = {}) => h('div', { class: 'field' },
    h('label', { for: `search-${key}` }, label),
    h('input', { id: `search-${key}`, name: key, value: state.form[key], autocomplete: 'off', ...attrs }));

  const modality = h('select', { id: 'search-modality', name: 'modality' },
    h('option', { value: '' }, 'Any'),
    MODALITIES.map((m) => h('option', { value: m }, m)));
  modality.value = state.form.modality;

  const pageSize = h('select', { id: 'page-size', name: 'limit', 'aria-label': 'Studies per page' },
    PAGE_SIZES.map((n) => h('option', { value: String(n) }, `${n} per page`)));
  pageSize.value = String(state.limit);

  const form = h('form', { class: 'search', role: 'search', 'aria-label': 'Find studies' },
    field('name', 'Patient name', {
      type: 'search', spellcheck: 'false',
      title: 'Names starting with this text, as stored (Family, Given); * and ? are wildcards',
    }),
    field('id', 'Patient ID', { type: 'search', spellcheck: 'false' }),
    field('from', 'Study date from', { type: 'date' }),
    field('to', 'to', { type: 'date' }),
    h('div', { class: 'field' }, h('label', { for: 'search-modality' }, 'Modality'), modality),
    field('accession', 'Accession', { type: 'search', spellcheck: 'false' }),
    h('div', { class: 'field actions' },
      h('button', { type: 'submit', class: 'primary' }, 'Search'),
      h('button', { type: 'reset' }, 'Clear')));

  const summary = h('p', { class: 'summary', id: 'result-summary' });
  const table = h('table', { class: 'studies', 'aria-describedby': 'result-summary' });
  const prev = h('button', { type: 'button', id: 'page-prev' }, '‹ Previous');
  const next = h('button', { type: 'button', id: 'page-next' }, 'Next ›');
  const pager = h('div', { class: 'pager' }, prev, h('span', { id: 'page-label' }), next, pageSize);

  replace(root, h('section', { class: 'study-list', 'aria-labelledby': 'list-title' },
    h('h1', { id: 'list-title', class: 'visually-hidden' }, 'Studies'),
    form, h('div', { class: 'results' }, summary, h('div', { class: 'table-wrap' }, table)), pager));

  function readForm() {
    for (const key of Object.keys(state.form)) state.form[key] = form.elements[key].value;
  }

  async function load() {
    controller.abort?.abort();
    const abort = new AbortController();
    controller.abort = abort;
    table.setAttribute('aria-busy', 'true');
    summary.textContent = 'Searching…';
    showError('');
    const params = {
      ...queryParameters(state.form),
      includefield: INCLUDE,
      // One more than shown: tells whether there is a next page.
      limit: state.limit + 1,
      offset: state.offset,
    };
    try {
      const found = await searchStudies(params, { signal: abort.signal });
      state.more = found.length > state.limit;
      state.results = found.slice(0, state.limit);
      render();
      state.focusedStudy = null;
    } catch (error) {
      if (error.name === 'AbortError') return;
      state.results = [];
      state.more = false;
      render();
      summary.textContent = 'Search failed.';
      showError(`Search failed: ${error.message}`);
    } finally {
      if (controller.abort === abort) table.removeAttribute('aria-busy');
    }
  }

  function sorted(results) {
    const column = COLUMNS.find((c) => c.key === state.sort.key) || COLUMNS[3];
    const sign = state.sort.descending ? -1 : 1;
    return results
      .map((ds, i) => ({ ds, i, v: column.value(ds) }))
      .sort((a, b) => {
        const emptyA = a.v == null || a.v === '';
        const emptyB = b.v == null || b.v === '';
        if (emptyA !== emptyB) return emptyA ? 1 : -1; // empty last either way
        return sign * compareValues(a.v, b.v) || a.i - b.i;
      })
      .map((x) => x.ds);
  }

  function header() {
    return h('thead', {}, h('tr', {}, COLUMNS.map((column) => {
      const active = state.sort.key === column.key;
      const direction = active ? (state.sort.descending ? 'descending' : 'ascending') : 'none';
      return h('th', { scope: 'col', 'aria-sort': direction, class: column.numeric ? 'num' : null },
        h('button', {
          type: 'button', class: 'sort', dataset: { sort: column.key },
          title: `Sort by ${column.label.toLowerCase()}`,
          onclick: () => {
            state.sort = active ? { key: column.key, descending: !state.sort.descending }
              : { key: column.key, descending: column.key === 'date' };
            render();
            table.querySelector(`button[data-sort="${column.key}"]`)?.focus();
          },
        }, column.label, h('span', { class: 'sort-mark', 'aria-hidden': 'true' },
          active ? (state.sort.descending ? ' ▼' : ' ▲') : '')));
    })));
  }

  function row(ds) {
    const uid = text(ds, T.StudyInstanceUID);
    const href = `#/studies/${uid}`;
    return h('tr', { dataset: { study: uid }, onclick: (event) => {
      if (!(event.target instanceof HTMLAnchorElement)) window.location.hash = href;
    } }, COLUMNS.map((column, i) => {
      const shown = column.display ? column.display(ds) : column.value(ds);
      const content = i === 0 ? h('a', { href, class: 'open-study' }, shown || '(no name)') : shown ?? '';
      return h('td', { class: column.numeric ? 'num' : null, dataset: { column: column.key } }, content);
    }));
  }

  function render() {
    const results = state.results || [];
    const rows = sorted(results).map(row);
    const body = h('tbody', {}, rows.length ? rows : h('tr', { class: 'empty' },
      h('td', { colspan: COLUMNS.length }, state.results ? 'No studies match the search.' : '')));
    replace(table, h('caption', { class: 'visually-hidden' }, 'Studies; column headers sort'),
      header(), body);
    const first = state.offset + 1;
    const last = state.offset + results.length;
    const label = results.length ? `Studies ${first}–${last}${state.more ? '' : ` of ${last}`}`
      : state.offset ? 'No more studies' : 'No studies';
    summary.textContent = `${label}.${results.length > 1 ? ' Sorting applies to this page.' : ''}`;
    document.getElementById('page-label').textContent = results.length ? `${first}–${last}` : '';
    prev.disabled = state.offset === 0;
    next.disabled = !state.more;
    announce(label);
    if (state.focusedStudy) {
      table.querySelector(`tr[data-study="${CSS.escape(state.focusedStudy)}"] a`)?.focus();
    }
  }

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    readForm();
    state.offset = 0;
    load();
  });
  form.addEventListener('reset', (event) => {
    event.preventDefault(); // cleared here, so the search runs at once on empty fields
    for (const key of Object.keys(state.form)) form.elements[key].value = '';
    readForm();
    state.offset = 0;
    load();
    form.elements.name.focus();
  });
  prev.addEventListener('click', () => { state.offset = Math.max(0, state.offset - state.limit); load(); });
  next.addEventListener('click', () => { state.offset += state.limit; load(); });
  pageSize.addEventListener('change', () => {
    state.limit = Number(pageSize.value);
    state.offset = 0;
    load();
  });
  // Remember which study was opened, to put the focus back on it.
  table.addEventListener('click', (event) => {
    const tr = event.target.closest?.('tr[data-study]');
    if (tr) state.focusedStudy = tr.dataset.study;
  });
  table.addEventListener('keydown', (event) => {
    if (event.key !== 'ArrowDown' && event.key !== 'ArrowUp') return;
    const links = [...table.querySelectorAll('a.open-study')];
    const index = links.indexOf(document.activeElement);
    if (index < 0) return;
    event.preventDefault();
    links[Math.max(0, Math.min(links.length - 1, index + (event.key === 'ArrowDown' ? 1 : -1)))].focus();
  });
  cleanups.push(listen(document, 'keydown', (event) => {
    if (typingInField(event) || event.ctrlKey || event.metaKey || event.altKey) return;
    if (dialogOpen()) return;
    if (event.key === '/') {
      event.preventDefault();
      form.elements.name.focus();
    } else if (event.key === '[' && !prev.disabled) prev.click();
    else if (event.key === ']' && !next.disabled) next.click();
    else if (event.key === 'ArrowDown' && !table.contains(document.activeElement)) {
      const link = table.querySelector('a.open-study');
      if (link) { event.preventDefault(); link.focus(); }
    }
  }));

  if (state.results) render(); // coming back: show what was there, then refresh it
  load();

  return {
    destroy() {
      controller.abort?.abort();
      cleanups.forEach((fn) => fn());
    },
  };
}
