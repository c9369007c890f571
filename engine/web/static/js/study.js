// The study page: who and what the study is, and its series as thumbnails.

import { T, formatDate, formatTime, text, textAll } from './dicom.js';
import {
  announce, dialogOpen, h, listen, replace, showError, typingInField,
} from './dom.js';
import { imageCount, seriesTitle, studyRecord, studySeries, thumbnail } from './series.js';

const SEX = { M: 'male', F: 'female', O: 'other' };

export function mountStudy(root, study) {
  let alive = true;
  const heading = h('h1', { id: 'study-title' }, 'Study');
  const facts = h('dl', { class: 'facts' });
  const grid = h('ul', { class: 'series-grid', 'aria-label': 'Series' });
  const status = h('p', { class: 'summary' }, 'Loading…');
  replace(root, h('section', { class: 'study', 'aria-labelledby': 'study-title' },
    h('header', { class: 'study-header' }, heading, facts), status, grid));

  const fact = (label, value) => (value ? h('div', {}, h('dt', {}, label), h('dd', {}, value)) : null);

  studyRecord(study).then((ds) => {
    if (!alive) return;
    if (!ds) { heading.textContent = 'Study not found'; return; }
    heading.textContent = text(ds, T.PatientName) || '(no name)';
    const sex = SEX[text(ds, T.PatientSex)] || text(ds, T.PatientSex);
    replace(facts,
      fact('Patient ID', text(ds, T.PatientID)),
      fact('Born', [formatDate(text(ds, T.PatientBirthDate)), sex].filter(Boolean).join(', ')),
      fact('Study date', [formatDate(text(ds, T.StudyDate)), formatTime(text(ds, T.StudyTime))].filter(Boolean).join(' ')),
      fact('Description', text(ds, T.StudyDescription)),
      fact('Modalities', textAll(ds, T.ModalitiesInStudy)),
      fact('Accession', text(ds, T.AccessionNumber)),
      fact('Referring', text(ds, T.ReferringPhysicianName)));
  }).catch((error) => alive && showError(`Could not load the study: ${error.message}`));

  studySeries(study).then((list) => {
    if (!alive) return;
    status.textContent = `${list.length} series`;
    announce(`${list.length} series`);
    replace(grid, list.map((ds) => {
      const uid = text(ds, T.SeriesInstanceUID);
      return h('li', { class: 'series-card', dataset: { series: uid } },
        h('a', { href: `#/studies/${study}/series/${uid}` },
          thumbnail(study, uid),
          h('span', { class: 'series-title' }, seriesTitle(ds)),
          h('span', { class: 'series-count' }, imageCount(ds))));
    }));
    if (!list.length) grid.append(h('li', { class: 'empty' }, 'This study has no series.'));
  }).catch((error) => {
    if (!alive) return;
    status.textContent = 'Could not load the series.';
    showError(`Could not load the series: ${error.message}`);
  });

  // Arrow keys move between series cards (a grid: left/right, and up/down by rows).
  grid.addEventListener('keydown', (event) => {
    const links = [...grid.querySelectorAll('a')];
    const index = links.indexOf(document.activeElement);
    if (index < 0) return;
    const perRow = Math.max(1, Math.round(grid.clientWidth / (links[0].parentElement.offsetWidth || 1)));
    const step = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: perRow, ArrowUp: -perRow }[event.key];
    if (!step) return;
    event.preventDefault();
    links[Math.max(0, Math.min(links.length - 1, index + step))].focus();
  });
  const stop = listen(document, 'keydown', (event) => {
    if (typingInField(event) || event.ctrlKey || event.metaKey || event.altKey) return;
    if (dialogOpen()) return;
    if (event.key === 'Escape') window.location.hash = '#/';
    else if (event.key.startsWith('Arrow') && !grid.contains(document.activeElement)) {
      const link = grid.querySelector('a');
      if (link) { event.preventDefault(); link.focus(); }
    }
  });

  return { destroy() { alive = false; stop(); } };
}
