// Series of a study and their thumbnails, shared by the study page and the viewer.

import { T, num, text } from './dicom.js';
import {
  fetchImageUrl, renderedUrl, searchAll, searchInstances, searchSeries, searchStudies,
} from './dicomweb.js';
import { h } from './dom.js';

const STUDY_FIELDS = [T.StudyDescription, T.ModalitiesInStudy, T.NumberOfStudyRelatedSeries,
  T.NumberOfStudyRelatedInstances, T.PatientBirthDate, T.PatientSex, T.StudyTime,
  T.ReferringPhysicianName, T.StudyID];

const memo = new Map(); // key -> {at, promise}
const MEMO_MS = 60_000;

function remember(key, make) {
  const hit = memo.get(key);
  if (hit && Date.now() - hit.at < MEMO_MS) return hit.promise;
  const promise = make();
  memo.set(key, { at: Date.now(), promise });
  promise.catch(() => memo.delete(key));
  return promise;
}

/** The study's QIDO-RS record (or null when the archive does not know it). */
export function studyRecord(study) {
  return remember(`study:${study}`, async () => {
    const found = await searchStudies({ StudyInstanceUID: study, includefield: STUDY_FIELDS });
    return found[0] || null;
  });
}

/** Series of a study, by series number. */
export function studySeries(study) {
  return remember(`series:${study}`, async () => {
    const found = await searchAll((params, opts) => searchSeries(study, params, opts),
      { includefield: 'all' }, (ds) => text(ds, T.SeriesInstanceUID));
    return found.sort((a, b) => (num(a, T.SeriesNumber) ?? 1e9) - (num(b, T.SeriesNumber) ?? 1e9));
  });
}

/** URL of a rendered image of the middle instance (or middle frame) of a series. */
export function thumbnailUrl(study, series) {
  return remember(`thumb:${study}:${series}`, async () => {
    const instances = await searchInstances(study, series, {
      includefield: [T.InstanceNumber, T.NumberOfFrames], limit: 5000,
    });
    if (!instances.length) return null;
    instances.sort((a, b) => (num(a, T.InstanceNumber) ?? 0) - (num(b, T.InstanceNumber) ?? 0));
    const middle = instances[Math.floor((instances.length - 1) / 2)];
    // Rows returned without a value: no pixel data (SR, KO, PR...), nothing to render.
    if (middle[T.Rows] && !(num(middle, T.Rows) > 0)) return null;
    const frames = num(middle, T.NumberOfFrames) ?? 1;
    return renderedUrl(study, series, text(middle, T.SOPInstanceUID),
      { frame: frames > 1 ? Math.ceil(frames / 2) : null, viewport: THUMBNAIL_SIZE });
  });
}

const THUMBNAIL_SIZE = 256;
const images = new Map(); // rendered URL -> Promise<object URL>, oldest first
const IMAGES_KEPT = 300;

/** An object URL of a thumbnail image (fetched once, kept for the most recent few hundred). */
function thumbnailImage(src) {
  let promise = images.get(src);
  if (promise) {
    images.delete(src);
  } else {
    promise = fetchImageUrl(src);
    promise.catch(() => images.delete(src));
  }
  images.set(src, promise);
  while (images.size > IMAGES_KEPT) {
    const [oldest, old] = images.entries().next().value;
    images.delete(oldest);
    old.then((url) => URL.revokeObjectURL(url), () => {});
  }
  return promise;
}

/** "Series 3 · CT · AXIAL 5MM" */
export function seriesTitle(ds) {
  const number = text(ds, T.SeriesNumber);
  return [number ? `Series ${number}` : 'Series', text(ds, T.Modality), text(ds, T.SeriesDescription)]
    .filter(Boolean).join(' · ');
}

export function imageCount(ds) {
  const n = num(ds, T.NumberOfSeriesRelatedInstances);
  return n == null ? '' : `${n} image${n === 1 ? '' : 's'}`;
}

// At most a few thumbnails load at once, in page order.
const queue = [];
let running = 0;
const THUMBNAILS_AT_ONCE = 3;

function pump() {
  while (running < THUMBNAILS_AT_ONCE && queue.length) {
    const job = queue.shift();
    if (!job.img.isConnected) continue;
    running += 1;
    job.run().finally(() => { running -= 1; pump(); });
  }
}

/** An <img> that shows the series thumbnail once found (or a "no image" placeholder). */
export function thumbnail(study, series, className = 'thumb') {
  const img = h('img', { class: className, alt: '', decoding: 'async', dataset: { series } });
  const box = h('div', { class: `${className}-box loading` }, img);
  const fail = () => {
    box.classList.remove('loading');
    box.classList.add('none');
    img.remove();
    box.append(h('span', { class: 'no-image' }, 'No image'));
  };
  const run = async () => {
    try {
      const rendered = await thumbnailUrl(study, series);
      if (!rendered) { fail(); return; }
      const src = await thumbnailImage(rendered);
      await new Promise((resolve) => {
        img.addEventListener('load', () => { box.classList.remove('loading'); resolve(); }, { once: true });
        img.addEventListener('error', () => { fail(); resolve(); }, { once: true });
        img.src = src;
      });
    } catch (error) {
      fail();
    }
  };
  queue.push({ img, run });
  queueMicrotask(pump);
  return box;
}
