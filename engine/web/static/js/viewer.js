// The image viewer: one series as a stack of slices (each frame of each instance),
// scrolled with the wheel, the keyboard or a slider; window/level presets and drag;
// zoom and pan. Pixels come either uncompressed (WADO-RS frames, windowed here, so
// dragging the window is instant) or as images the archive renders at the current
// window (WADO-RS rendered): the fallback for colour and anything not decodable here.

import { T, formatDate, nums, num, text } from './dicom.js';
import {
  fetchFrame, fetchRendered, instanceMetadata, renderedUrl, searchAll, searchInstances,
  seriesMetadata,
} from './dicomweb.js';
import {
  announce, dialogOpen, h, listen, replace, showError, typingInField,
} from './dom.js';
import {
  applyLut, buildLut, canWindowLocally, decodeFrame, fullRangeWindow, pixelModule,
} from './imaging.js';
import { seriesTitle, studySeries, thumbnail } from './series.js';

/** Window presets: 'default' is the window the file names (per image). */
export const PRESETS = [
  { key: 'default', label: 'Default', shortcut: '1' },
  { key: 'soft', label: 'Soft tissue', center: 40, width: 400, shortcut: '2', ct: true },
  { key: 'lung', label: 'Lung', center: -600, width: 1500, shortcut: '3', ct: true },
  { key: 'bone', label: 'Bone', center: 400, width: 1800, shortcut: '4', ct: true },
  { key: 'brain', label: 'Brain', center: 40, width: 80, shortcut: '5', ct: true },
];
const TOOLS = [
  { key: 'wl', label: 'Window', shortcut: 'W', title: 'Drag adjusts window/level (W)' },
  { key: 'pan', label: 'Pan', shortcut: 'P', title: 'Drag moves the image (P)' },
  { key: 'zoom', label: 'Zoom', shortcut: 'Z', title: 'Drag up/down zooms (Z)' },
];
const RENDERING_KEY = 'pacs-viewer-rendering';
const MB = 1024 * 1024;

/** A least-recently-used cache of promises, bounded by the bytes of what they resolve to. */
class Cache {
  constructor(budget) {
    this.budget = budget;
    this.used = 0;
    this.entries = new Map();
  }

  get(key, make, sizeOf) {
    let entry = this.entries.get(key);
    if (entry) {
      this.entries.delete(key);
      this.entries.set(key, entry);
      return entry.promise;
    }
    entry = { size: 0, promise: make() };
    this.entries.set(key, entry);
    entry.promise.then((value) => {
      if (this.entries.get(key) !== entry) return;
      entry.size = sizeOf(value);
      this.used += entry.size;
      this.trim();
    }, () => { if (this.entries.get(key) === entry) this.entries.delete(key); });
    return entry.promise;
  }

  has(key) {
    return this.entries.has(key);
  }

  trim() {
    for (const [key, entry] of this.entries) {
      if (this.used <= this.budget) break;
      this.entries.delete(key);
      this.used -= entry.size;
    }
  }

  clear() {
    this.entries.clear();
    this.used = 0;
  }
}

/** Run at most `limit` of the queued jobs at once; `replace` drops those not started. */
class Prefetcher {
  constructor(limit) {
    this.limit = limit;
    this.running = 0;
    this.queue = [];
  }

  replace(jobs) {
    this.queue = jobs;
    this.pump();
  }

  pump() {
    while (this.running < this.limit && this.queue.length) {
      const job = this.queue.shift();
      this.running += 1;
      Promise.resolve().then(job).catch(() => {}).finally(() => { this.running -= 1; this.pump(); });
    }
  }
}

function clamp(value, low, high) {
  return Math.min(high, Math.max(low, value));
}

function formatNumber(value, digits = 1) {
  if (value == null || !Number.isFinite(value)) return '';
  return Number.isInteger(value) ? String(value) : value.toFixed(digits);
}

/** Position of a frame along the normal of its plane (mm), or SliceLocation. */
function slicePosition(meta, frameIndex) {
  const location = num(meta, T.SliceLocation);
  const position = frameNumbers(meta, frameIndex, T.PlanePositionSequence, T.ImagePositionPatient);
  const orientation = frameNumbers(meta, frameIndex, T.PlaneOrientationSequence, T.ImageOrientationPatient);
  if (position.length === 3 && orientation.length === 6) {
    const [a, b, c, d, e, f] = orientation;
    const normal = [b * f - c * e, c * d - a * f, a * e - b * d];
    return position[0] * normal[0] + position[1] * normal[1] + position[2] * normal[2];
  }
  return location;
}

function frameNumbers(meta, frameIndex, macro, tag) {
  const direct = nums(meta, tag);
  if (direct.length) return direct;
  const perFrame = meta?.[T.PerFrameFunctionalGroupsSequence]?.Value?.[frameIndex];
  const shared = meta?.[T.SharedFunctionalGroupsSequence]?.Value?.[0];
  for (const group of [perFrame, shared]) {
    const values = nums(group?.[macro]?.Value?.[0], tag);
    if (values.length) return values;
  }
  return [];
}

/** Slices of a series from its instances' metadata: every frame, in instance-number order. */
export function buildSlices(metas) {
  const slices = [];
  for (const meta of metas) {
    if (!meta || !(num(meta, T.Rows) > 0)) continue; // no pixel data (SR, KO, PR...)
    const frames = Math.max(1, num(meta, T.NumberOfFrames) ?? 1);
    const sop = text(meta, T.SOPInstanceUID);
    for (let f = 0; f < frames; f += 1) {
      slices.push({
        sop, meta, frames, frameIndex: f, frame: f + 1,
        instanceNumber: num(meta, T.InstanceNumber),
        position: slicePosition(meta, f),
        pm: null,
      });
    }
  }
  slices.sort((a, b) => ((a.instanceNumber ?? Infinity) - (b.instanceNumber ?? Infinity))
    || ((a.position ?? 0) - (b.position ?? 0)) || a.frameIndex - b.frameIndex
    || (a.sop < b.sop ? -1 : a.sop > b.sop ? 1 : 0));
  return slices;
}

async function mapLimit(items, limit, fn) {
  const results = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next;
      next += 1;
      results[i] = await fn(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

export function mountViewer(root, study, firstSeries) {
  const s = {
    study,
    series: null,
    seriesRecord: null,
    slices: [],
    index: 0,
    preset: 'default',
    voi: null, // {center, width} when not following each image's own window
    invert: false,
    zoom: 1,
    panX: 0,
    panY: 0,
    tool: 'wl',
    serverRendering: localStorage.getItem(RENDERING_KEY) === 'server',
    localFailed: false, // uncompressed frames unavailable for this series: render server-side
    displayed: null, // {slice, source, width, height, aspect, voi, mode}
    loadAbort: null,
    draws: 0,
  };
  const frames = new Cache(256 * MB); // decoded frames (client windowing)
  const bitmaps = new Cache(160 * MB); // rendered images (server windowing)
  const prefetcher = new Prefetcher(3);
  const cleanups = [];
  let alive = true;

  // --- DOM ----------------------------------------------------------------------
  const field = (name, attrs = {}) => h('span', { dataset: { field: name }, ...attrs });
  const canvas = h('canvas', { id: 'viewport', role: 'img', 'aria-label': 'Image' });
  const ctx = canvas.getContext('2d');
  const offscreen = document.createElement('canvas');
  const offscreenCtx = offscreen.getContext('2d', { willReadFrequently: false });
  const message = h('div', { class: 'stage-message', role: 'status' });
  const overlay = {
    tl: h('div', { class: 'overlay tl' }, h('div', {}, field('patient')), h('div', {}, field('patient-id')),
      h('div', {}, field('patient-extra'))),
    tr: h('div', { class: 'overlay tr' }, h('div', {}, field('study-date')),
      h('div', {}, field('study-description')), h('div', {}, field('series'))),
    bl: h('div', { class: 'overlay bl' },
      h('div', {}, 'Im ', field('instance'), ' ', h('span', { class: 'dim' }, '(', field('index'), ')')),
      h('div', {}, field('position')), h('div', {}, field('thickness'))),
    br: h('div', { class: 'overlay br' },
      h('div', {}, 'W ', field('window-width'), ' L ', field('window-center')),
      h('div', {}, field('preset')), h('div', {}, 'Zoom ', field('zoom')),
      h('div', { class: 'dim' }, field('mode'))),
  };
  const stage = h('div', {
    class: 'stage', tabindex: '0', id: 'stage',
    'aria-label': 'Image viewport. Arrow keys or the wheel change image; press ? for shortcuts.',
  }, canvas, Object.values(overlay), message);

  const presetButtons = PRESETS.map((p) => h('button', {
    type: 'button', class: 'preset', dataset: { preset: p.key },
    title: `${p.label}${p.center != null ? ` (W ${p.width} / L ${p.center})` : ' (from the image)'} — key ${p.shortcut}`,
    'aria-pressed': 'false', onclick: () => setPreset(p.key),
  }, p.label, h('kbd', { 'aria-hidden': 'true' }, p.shortcut)));
  const toolButtons = TOOLS.map((t) => h('button', {
    type: 'button', class: 'tool', dataset: { tool: t.key }, title: t.title,
    'aria-pressed': 'false', onclick: () => setTool(t.key),
  }, t.label, h('kbd', { 'aria-hidden': 'true' }, t.shortcut)));
  const invertButton = h('button', {
    type: 'button', id: 'invert', 'aria-pressed': 'false', title: 'Invert grey levels (I)',
    onclick: () => { s.invert = !s.invert; refresh(); },
  }, 'Invert', h('kbd', { 'aria-hidden': 'true' }, 'I'));
  const resetButton = h('button', {
    type: 'button', id: 'reset', title: 'Reset window, zoom and pan (R)', onclick: () => reset(),
  }, 'Reset', h('kbd', { 'aria-hidden': 'true' }, 'R'));
  const serverToggle = h('input', { type: 'checkbox', id: 'server-rendering', checked: s.serverRendering });
  const slider = h('input', {
    type: 'range', id: 'slice-slider', min: '1', max: '1', value: '1', step: '1', disabled: true,
  });
  const sliceLabel = h('output', { id: 'slice-label', for: 'slice-slider' });
  const strip = h('ul', { class: 'series-strip', 'aria-label': 'Series of this study' });

  replace(root, h('section', { class: 'viewer', 'aria-label': 'Image viewer' },
    h('nav', { class: 'series-nav', 'aria-label': 'Series' }, strip),
    h('div', { class: 'viewer-main' },
      h('div', { class: 'toolbar' },
        h('div', { class: 'group', role: 'group', 'aria-label': 'Window presets', id: 'presets' }, presetButtons),
        h('div', { class: 'group', role: 'group', 'aria-label': 'Drag tool' }, toolButtons),
        h('div', { class: 'group' }, invertButton, resetButton),
        h('label', { class: 'toggle', for: 'server-rendering', title: 'Let the archive window the images' },
          serverToggle, ' Server rendering')),
      stage,
      h('div', { class: 'slicebar' },
        h('label', { for: 'slice-slider' }, 'Image'), slider, sliceLabel))));

  // --- series ---------------------------------------------------------------------
  async function loadSeries(uid) {
    s.loadAbort?.abort();
    const abort = new AbortController();
    s.loadAbort = abort;
    s.series = uid;
    s.slices = [];
    s.index = 0;
    s.displayed = null;
    s.localFailed = false;
    s.preset = 'default';
    s.voi = null;
    s.zoom = 1;
    s.panX = 0;
    s.panY = 0;
    prefetcher.replace([]);
    frames.clear();
    bitmaps.clear();
    updateSlider();
    updateButtons();
    markStrip();
    paint();
    setMessage('Loading series…');
    showError('');
    let metas;
    try {
      metas = await seriesMetadata(study, uid, { signal: abort.signal });
    } catch (error) {
      if (error.name === 'AbortError') return;
      // No series-level metadata: list the instances, then their metadata one by one.
      try {
        const instances = await searchAll((p, o) => searchInstances(study, uid, p, o),
          { includefield: 'all' }, (ds) => text(ds, T.SOPInstanceUID), { signal: abort.signal });
        metas = await mapLimit(instances, 6, (ds) => instanceMetadata(study, uid,
          text(ds, T.SOPInstanceUID), { signal: abort.signal }));
      } catch (inner) {
        if (inner.name === 'AbortError' || s.loadAbort !== abort) return;
        setMessage('Could not load this series.');
        showError(`Could not load the series: ${inner.message}`);
        return;
      }
    }
    if (s.loadAbort !== abort || !alive) return;
    s.slices = buildSlices(metas);
    if (!s.slices.length) {
      setMessage('This series has no images to show.');
      updateSlider();
      return;
    }
    setMessage('');
    updateSlider();
    updateButtons();
    announce(`${s.slices.length} images`);
    go(0);
  }

  async function loadStrip() {
    try {
      const list = await studySeries(study);
      if (!alive) return;
      replace(strip, list.map((ds) => {
        const uid = text(ds, T.SeriesInstanceUID);
        if (uid === s.series) s.seriesRecord = ds;
        return h('li', { dataset: { series: uid } },
          h('a', { href: `#/studies/${study}/series/${uid}`, title: seriesTitle(ds) },
            thumbnail(study, uid, 'mini'),
            h('span', {}, seriesTitle(ds))));
      }));
      markStrip();
    } catch (error) {
      // The strip is a convenience; the viewer works without it.
    }
  }

  function markStrip() {
    for (const li of strip.children) {
      const link = li.querySelector('a');
      if (!link) continue;
      if (li.dataset.series === s.series) link.setAttribute('aria-current', 'true');
      else link.removeAttribute('aria-current');
    }
  }

  function stepSeries(delta) {
    const uids = [...strip.children].map((li) => li.dataset.series).filter(Boolean);
    const i = uids.indexOf(s.series);
    if (i < 0 || !uids.length) return;
    const next = uids[clamp(i + delta, 0, uids.length - 1)];
    if (next !== s.series) window.location.hash = `#/studies/${study}/series/${next}`;
  }

  // --- what to show -------------------------------------------------------------------
  function pmOf(slice) {
    if (!slice.pm) slice.pm = pixelModule(slice.meta, slice.frameIndex);
    return slice.pm;
  }

  function isCT() {
    const slice = s.slices[s.index];
    return text(slice?.meta ?? s.seriesRecord, T.Modality) === 'CT';
  }

  function modeOf(slice) {
    return s.serverRendering || s.localFailed || !canWindowLocally(pmOf(slice)) ? 'server' : 'local';
  }

  /** Colour images are shown as they are: no window. */
  function isColour(slice) {
    return pmOf(slice).samples > 1 || !/^MONOCHROME/.test(pmOf(slice).photometric);
  }

  /** The window for a slice: the chosen one, else the image's own (else its full range). */
  function voiFor(slice, decoded) {
    if (isColour(slice)) return null;
    if (s.voi) return s.voi;
    const own = pmOf(slice).windows[0];
    if (own) return { center: own.center, width: own.width };
    return decoded ? fullRangeWindow(decoded) : null;
  }

  function loadDecoded(slice, signal) {
    return frames.get(`${slice.sop}/${slice.frame}`, async () => {
      const { bytes } = await fetchFrame(study, s.series, slice.sop, slice.frame, { signal });
      return decodeFrame(bytes, pmOf(slice));
    }, (decoded) => decoded.bytes);
  }

  function renderedKey(slice, voi) {
    return `${slice.sop}/${slice.frame}/${voi ? `${voi.center},${voi.width}` : 'auto'}`;
  }

  function loadBitmap(slice, voi) {
    return bitmaps.get(renderedKey(slice, voi), () => fetchRendered(renderedUrl(study, s.series,
      slice.sop, { frame: slice.frames > 1 ? slice.frame : null, window: voi })),
    (bitmap) => bitmap.width * bitmap.height * 4);
  }

  /** Produce the image of a slice at the current window: {source, width, height, voi, mode}. */
  async function produce(slice) {
    if (modeOf(slice) === 'local') {
      try {
        const decoded = await loadDecoded(slice);
        const voi = voiFor(slice, decoded);
        const pm = pmOf(slice);
        if (offscreen.width !== decoded.columns || offscreen.height !== decoded.rows) {
          offscreen.width = decoded.columns;
          offscreen.height = decoded.rows;
        }
        const image = offscreenCtx.createImageData(decoded.columns, decoded.rows);
        applyLut(decoded, buildLut(decoded, pm, voi, s.invert), image);
        offscreenCtx.putImageData(image, 0, 0);
        return { source: offscreen, width: decoded.columns, height: decoded.rows, voi, mode: 'local', inverted: false };
      } catch (error) {
        if (error.name === 'AbortError') throw error;
        // The archive cannot send this series uncompressed (or it is not decodable
        // here): let it render the images instead, from now on.
        console.info('Client-side windowing unavailable, using rendered images:', error.message);
        s.localFailed = true;
      }
    }
    const voi = voiFor(slice, null);
    const bitmap = await loadBitmap(slice, voi);
    return { source: bitmap, width: bitmap.width, height: bitmap.height, voi, mode: 'server', inverted: s.invert };
  }

  // One production at a time; when the wanted view changed meanwhile, produce again.
  let producing = null;
  let again = false;

  function refresh() {
    if (producing) { again = true; return; }
    const slice = s.slices[s.index];
    if (!slice) return;
    producing = produce(slice).then((image) => {
      if (!alive || !s.slices.includes(slice)) return;
      s.displayed = { slice, aspect: pmOf(slice).aspect, ...image };
      s.draws += 1;
      setMessage('');
      paint();
      prefetch();
    }).catch((error) => {
      if (error.name === 'AbortError' || !alive) return;
      setMessage(`Cannot show image ${s.index + 1}: ${error.message}`);
    }).finally(() => {
      producing = null;
      if (again) { again = false; refresh(); }
    });
  }

  let direction = 1;

  function prefetch() {
    if (dragging) return;
    const jobs = [];
    const ahead = direction > 0 ? [1, 2, 3, 4, 5, 6, 7, 8, -1, -2, -3] : [-1, -2, -3, -4, -5, -6, -7, -8, 1, 2, 3];
    for (const delta of ahead) {
      const slice = s.slices[s.index + delta];
      if (!slice) continue;
      if (modeOf(slice) === 'local') {
        if (!frames.has(`${slice.sop}/${slice.frame}`)) jobs.push(() => loadDecoded(slice));
      } else {
        const voi = voiFor(slice, null);
        if (!bitmaps.has(renderedKey(slice, voi)) && delta > -3 && delta < 6) {
          jobs.push(() => loadBitmap(slice, voi));
        }
      }
    }
    prefetcher.replace(jobs);
  }

  // --- drawing -------------------------------------------------------------------------
  function fitCanvas() {
    const dpr = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(stage.clientWidth * dpr));
    const height = Math.max(1, Math.round(stage.clientHeight * dpr));
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
      return true;
    }
    return false;
  }

  function paint() {
    fitCanvas();
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.filter = 'none';
    ctx.fillStyle = '#000';
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    const d = s.displayed;
    if (!d) { updateOverlay(); return; }
    const dpr = window.devicePixelRatio || 1;
    const fit = Math.min(canvas.width / d.width, canvas.height / (d.height * d.aspect));
    const scale = fit * s.zoom;
    const w = d.width * scale;
    const hgt = d.height * d.aspect * scale;
    const x = (canvas.width - w) / 2 + s.panX * dpr;
    const y = (canvas.height - hgt) / 2 + s.panY * dpr;
    // Interpolated, as reading software does, until zoomed in to see the pixels themselves.
    ctx.imageSmoothingEnabled = s.zoom < 3;
    ctx.imageSmoothingQuality = 'high';
    if (d.mode === 'server' && s.invert) ctx.filter = 'invert(1)';
    ctx.drawImage(d.source, x, y, w, hgt);
    ctx.filter = 'none';
    canvas.dataset.sop = d.slice.sop;
    canvas.dataset.frame = String(d.slice.frame);
    canvas.dataset.window = d.voi ? `${round(d.voi.center)},${round(d.voi.width)}` : 'auto';
    canvas.dataset.mode = d.mode;
    canvas.dataset.draws = String(s.draws);
    canvas.dataset.invert = String(s.invert);
    updateOverlay();
  }

  function round(n) {
    return Math.round(n * 10) / 10;
  }

  function setField(name, value) {
    const el = stage.querySelector(`[data-field="${name}"]`);
    if (el && el.textContent !== value) el.textContent = value;
  }

  function updateOverlay() {
    const d = s.displayed;
    const meta = d?.slice.meta;
    const slice = d?.slice;
    setField('patient', meta ? text(meta, T.PatientName) : '');
    setField('patient-id', meta ? text(meta, T.PatientID) : '');
    setField('patient-extra', meta ? [text(meta, T.PatientSex), formatDate(text(meta, T.PatientBirthDate))].filter(Boolean).join(' ') : '');
    setField('study-date', meta ? formatDate(text(meta, T.StudyDate)) : '');
    setField('study-description', meta ? text(meta, T.StudyDescription) : '');
    setField('series', meta ? seriesTitle(meta) : '');
    setField('instance', slice ? `${slice.instanceNumber ?? '?'}${slice.frames > 1 ? ` fr ${slice.frame}` : ''}` : '');
    setField('index', slice ? `${s.slices.indexOf(slice) + 1}/${s.slices.length}` : '');
    setField('position', slice?.position != null ? `Pos ${formatNumber(slice.position)} mm` : '');
    const thickness = meta ? num(meta, T.SliceThickness) : null;
    setField('thickness', thickness != null ? `Thk ${formatNumber(thickness, 2)} mm` : '');
    const colour = slice ? isColour(slice) : false;
    setField('window-width', d?.voi ? formatNumber(round(d.voi.width)) : colour ? '–' : 'auto');
    setField('window-center', d?.voi ? formatNumber(round(d.voi.center)) : colour ? '–' : 'auto');
    const preset = PRESETS.find((p) => p.key === s.preset);
    setField('preset', preset ? preset.label : 'Custom');
    setField('zoom', `${Math.round(s.zoom * 100)}%`);
    setField('mode', d ? (d.mode === 'local' ? 'Client windowing' : 'Server rendering') : '');
    canvas.setAttribute('aria-label', slice ? `Image ${s.slices.indexOf(slice) + 1} of ${s.slices.length}` : 'No image');
  }

  function setMessage(textValue) {
    message.textContent = textValue;
    message.hidden = !textValue;
  }

  // --- controls -------------------------------------------------------------------------
  function updateSlider() {
    const n = s.slices.length;
    slider.max = String(Math.max(1, n));
    slider.value = String(s.index + 1);
    slider.disabled = n < 2;
    slider.setAttribute('aria-valuetext', n ? `Image ${s.index + 1} of ${n}` : 'No images');
    sliceLabel.textContent = n ? `${s.index + 1} / ${n}` : '';
  }

  function updateButtons() {
    const ct = isCT();
    for (const button of presetButtons) {
      const preset = PRESETS.find((p) => p.key === button.dataset.preset);
      button.hidden = preset.ct && !ct;
      button.setAttribute('aria-pressed', String(s.preset === preset.key));
    }
    for (const button of toolButtons) button.setAttribute('aria-pressed', String(s.tool === button.dataset.tool));
    invertButton.setAttribute('aria-pressed', String(s.invert));
    stage.dataset.tool = s.tool;
  }

  function go(index) {
    if (!s.slices.length) return;
    const target = clamp(index, 0, s.slices.length - 1);
    if (target !== s.index) direction = target > s.index ? 1 : -1;
    s.index = target;
    updateSlider();
    refresh();
  }

  function setPreset(key) {
    const preset = PRESETS.find((p) => p.key === key);
    if (!preset || (preset.ct && !isCT())) return;
    s.preset = key;
    s.voi = preset.center != null ? { center: preset.center, width: preset.width } : null;
    updateButtons();
    refresh();
  }

  function setTool(key) {
    s.tool = key;
    updateButtons();
  }

  function reset() {
    s.preset = 'default';
    s.voi = null;
    s.zoom = 1;
    s.panX = 0;
    s.panY = 0;
    s.invert = false;
    updateButtons();
    refresh();
  }

  function zoomAt(factor, clientX, clientY) {
    const zoom = clamp(s.zoom * factor, 0.1, 20);
    const applied = zoom / s.zoom;
    const rect = stage.getBoundingClientRect();
    const cx = (clientX ?? rect.left + rect.width / 2) - (rect.left + rect.width / 2);
    const cy = (clientY ?? rect.top + rect.height / 2) - (rect.top + rect.height / 2);
    s.panX = cx - (cx - s.panX) * applied;
    s.panY = cy - (cy - s.panY) * applied;
    s.zoom = zoom;
    paint();
  }

  // Wheel: one image per notch (mouse), or per 50 px of smooth scrolling (touchpad).
  let wheelRest = 0;
  stage.addEventListener('wheel', (event) => {
    event.preventDefault();
    if (event.ctrlKey || event.metaKey) {
      zoomAt(Math.exp(-event.deltaY / 500), event.clientX, event.clientY);
      return;
    }
    const delta = event.deltaMode === 0 ? event.deltaY : event.deltaY * 40;
    if (Math.abs(delta) >= 50) {
      wheelRest = 0;
      go(s.index + Math.sign(delta));
      return;
    }
    wheelRest += delta;
    const steps = Math.trunc(wheelRest / 50);
    if (steps) {
      wheelRest -= steps * 50;
      go(s.index + steps);
    }
  }, { passive: false });

  // Drag: right button always windows, middle (or Shift) pans, Ctrl zooms, left uses the tool.
  let dragging = null;
  stage.addEventListener('contextmenu', (event) => event.preventDefault());
  stage.addEventListener('pointerdown', (event) => {
    if (!s.displayed) return;
    let tool = s.tool;
    if (event.button === 2) tool = 'wl';
    else if (event.button === 1 || event.shiftKey) tool = 'pan';
    else if (event.ctrlKey) tool = 'zoom';
    else if (event.button !== 0) return;
    if (tool === 'wl' && isColour(s.displayed.slice)) return; // nothing to window
    event.preventDefault();
    stage.focus({ preventScroll: true });
    stage.setPointerCapture(event.pointerId);
    const start = s.displayed.voi || voiFor(s.displayed.slice, null) || { center: 0, width: 1000 };
    dragging = {
      tool, x: event.clientX, y: event.clientY, pointerId: event.pointerId,
      voi: { ...start }, panX: s.panX, panY: s.panY,
      sensitivity: Math.max(start.width / 300, 0.05),
    };
    stage.classList.add('dragging');
  });
  stage.addEventListener('pointermove', (event) => {
    if (!dragging || event.pointerId !== dragging.pointerId) return;
    const dx = event.clientX - dragging.x;
    const dy = event.clientY - dragging.y;
    if (dragging.tool === 'wl') {
      s.preset = 'custom';
      s.voi = {
        center: dragging.voi.center + dy * dragging.sensitivity,
        width: Math.max(1, dragging.voi.width + dx * dragging.sensitivity),
      };
      updateButtons();
      refresh();
    } else if (dragging.tool === 'pan') {
      s.panX = dragging.panX + dx;
      s.panY = dragging.panY + dy;
      paint();
    } else {
      zoomAt(Math.exp(-(event.clientY - (dragging.lastY ?? dragging.y)) / 150),
        dragging.x, dragging.y);
      dragging.lastY = event.clientY;
    }
  });
  const endDrag = (event) => {
    if (!dragging || event.pointerId !== dragging.pointerId) return;
    dragging = null;
    stage.classList.remove('dragging');
    prefetch();
  };
  stage.addEventListener('pointerup', endDrag);
  stage.addEventListener('pointercancel', endDrag);

  slider.addEventListener('input', () => go(Number(slider.value) - 1));
  serverToggle.addEventListener('change', () => {
    s.serverRendering = serverToggle.checked;
    s.localFailed = false;
    localStorage.setItem(RENDERING_KEY, s.serverRendering ? 'server' : 'local');
    refresh();
  });

  cleanups.push(listen(document, 'keydown', (event) => {
    if (typingInField(event) || event.ctrlKey || event.metaKey || event.altKey) return;
    if (dialogOpen()) return;
    const onSlider = event.target === slider;
    const key = event.key;
    const navigation = {
      ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1, PageDown: 10, PageUp: -10,
    };
    if (key in navigation || key === 'Home' || key === 'End') {
      if (onSlider) return; // the slider moves itself, and says so
      event.preventDefault();
      if (key === 'Home') go(0);
      else if (key === 'End') go(s.slices.length - 1);
      else go(s.index + navigation[key]);
      return;
    }
    const preset = PRESETS.find((p) => p.shortcut === key);
    if (preset) { setPreset(preset.key); return; }
    const lower = key.toLowerCase();
    const tool = TOOLS.find((t) => t.shortcut.toLowerCase() === lower);
    if (tool) { setTool(tool.key); return; }
    if (lower === 'i') { s.invert = !s.invert; updateButtons(); refresh(); }
    else if (lower === 'r') reset();
    else if (lower === 'o') stage.classList.toggle('no-overlay');
    else if (key === '+' || key === '=') zoomAt(1.25);
    else if (key === '-' || key === '_') zoomAt(0.8);
    else if (key === '[') stepSeries(-1);
    else if (key === ']') stepSeries(1);
    else if (key === 'Escape') window.location.hash = `#/studies/${study}`;
  }));

  const resize = new ResizeObserver(() => { if (fitCanvas()) paint(); });
  resize.observe(stage);
  cleanups.push(() => resize.disconnect());
  invertButton.addEventListener('click', updateButtons);

  loadSeries(firstSeries);
  loadStrip();
  stage.focus({ preventScroll: true });

  return {
    showSeries(uid) {
      if (uid !== s.series) loadSeries(uid);
    },
    destroy() {
      alive = false;
      s.loadAbort?.abort();
      prefetcher.replace([]);
      frames.clear();
      bitmaps.clear();
      cleanups.forEach((fn) => fn());
    },
  };
}
