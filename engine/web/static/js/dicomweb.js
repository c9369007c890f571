// A DICOMweb (PS3.18) client: QIDO-RS searches, WADO-RS metadata, rendered images
// and uncompressed frames. The viewer talks to the archive through this only.

const META_ROOT = document.querySelector('meta[name="dicomweb-root"]')?.content ?? '/dicomweb';
const ROOT = (META_ROOT.includes('{{') ? '/dicomweb' : META_ROOT).replace(/\/+$/, '');
const TOKEN_KEY = 'pacs-dicomweb-token';

export const EXPLICIT_VR_LITTLE_ENDIAN = '1.2.840.10008.1.2.1';
const FRAME_ACCEPT =
  `multipart/related; type="application/octet-stream"; transfer-syntax=${EXPLICIT_VR_LITTLE_ENDIAN}`;

export class HttpError extends Error {
  constructor(status, statusText, url) {
    super(`${status} ${statusText || 'error'} from the archive`);
    this.name = 'HttpError';
    this.status = status;
    this.url = url;
  }
}

const enc = encodeURIComponent;

function url(path, params = {}) {
  const u = new URL(ROOT + path, window.location.origin);
  for (const [key, value] of Object.entries(params)) {
    for (const v of [].concat(value)) {
      if (v != null && v !== '') u.searchParams.append(key, String(v));
    }
  }
  return u.pathname + u.search;
}

// Bearer token for archives that ask for one (kept for this browser tab only). HTTP
// Basic needs nothing here: the browser asks for the password and sends it itself.
let tokenPrompt = null;

function authorization() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/** Ask for an access token (one dialog however many requests wait); false if cancelled. */
function askForToken() {
  if (tokenPrompt) return tokenPrompt;
  const dialog = document.getElementById('token-dialog');
  if (!dialog) return Promise.resolve(false);
  tokenPrompt = new Promise((resolve) => {
    const input = dialog.querySelector('input');
    input.value = '';
    dialog.addEventListener('close', () => {
      const ok = dialog.returnValue === 'ok' && input.value.trim() !== '';
      if (ok) sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      input.value = '';
      tokenPrompt = null;
      resolve(ok);
    }, { once: true });
    dialog.returnValue = '';
    dialog.showModal();
  });
  return tokenPrompt;
}

async function get(target, accept, signal) {
  for (let attempt = 0; ; attempt += 1) {
    const response = await fetch(target, {
      headers: { Accept: accept, ...authorization() }, signal, credentials: 'same-origin',
    });
    if (response.status === 401 && attempt < 3
        && /^bearer/i.test(response.headers.get('WWW-Authenticate') || '')) {
      sessionStorage.removeItem(TOKEN_KEY);
      if (await askForToken()) continue;
    }
    if (!response.ok) throw new HttpError(response.status, response.statusText, target);
    return response;
  }
}

async function getJson(target, signal) {
  const response = await get(target, 'application/dicom+json, application/json;q=0.9', signal);
  if (response.status === 204) return [];
  const body = await response.text();
  return body ? JSON.parse(body) : [];
}

/** Path of a study, series or instance resource. */
export function resource(study, series, instance) {
  let path = `/studies/${enc(study)}`;
  if (series) path += `/series/${enc(series)}`;
  if (instance) path += `/instances/${enc(instance)}`;
  return path;
}

/** QIDO-RS: matching studies (DICOM JSON datasets). */
export function searchStudies(params, { signal } = {}) {
  return getJson(url('/studies', params), signal);
}

/** QIDO-RS: series of a study. */
export function searchSeries(study, params, { signal } = {}) {
  return getJson(url(`${resource(study)}/series`, params), signal);
}

/** QIDO-RS: instances of a series. */
export function searchInstances(study, series, params, { signal } = {}) {
  return getJson(url(`${resource(study, series)}/instances`, params), signal);
}

/**
 * Every result of a QIDO-RS search, page by page (a server may return fewer than asked:
 * its own maximum). Stops at an empty page or one that adds nothing new.
 */
export async function searchAll(search, params, key, { signal, pageSize = 1000 } = {}) {
  const seen = new Map();
  for (let page = 0; page < 200; page += 1) {
    const results = await search({ ...params, limit: pageSize, offset: seen.size }, { signal });
    let added = 0;
    for (const ds of results) {
      const id = key(ds);
      if (!seen.has(id)) { seen.set(id, ds); added += 1; }
    }
    if (!results.length || !added || results.length < Math.min(pageSize, 100)) break;
  }
  return [...seen.values()];
}

/** WADO-RS: metadata of every instance of a series. */
export function seriesMetadata(study, series, { signal } = {}) {
  return getJson(url(`${resource(study, series)}/metadata`), signal);
}

/** WADO-RS: metadata of one instance (a DICOM JSON dataset). */
export async function instanceMetadata(study, series, instance, { signal } = {}) {
  const results = await getJson(url(`${resource(study, series, instance)}/metadata`), signal);
  return Array.isArray(results) ? results[0] : results;
}

/**
 * URL of a rendered image (WADO-RS rendered resource): of one frame when `frame` is
 * given, windowed server-side when `window` ({center, width}) is given, fitted in a
 * square of `viewport` pixels when given.
 */
export function renderedUrl(study, series, instance, { frame, window: voi, viewport } = {}) {
  let path = resource(study, series, instance);
  if (frame) path += `/frames/${frame}`;
  const params = {};
  if (voi) params.window = `${round(voi.center)},${round(Math.max(voi.width, 1))},linear`;
  if (viewport) params.viewport = `${viewport},${viewport}`;
  return url(`${path}/rendered`, params);
}

function round(n) {
  return Math.round(n * 100) / 100;
}

/** Fetch an image into an object URL (for <img>: requests that carry the credentials). */
export async function fetchImageUrl(target, { signal } = {}) {
  const response = await get(target, 'image/jpeg, image/png;q=0.9', signal);
  return URL.createObjectURL(await response.blob());
}

/** Fetch a rendered image and decode it (an ImageBitmap). */
export async function fetchRendered(target, { signal } = {}) {
  const response = await get(target, 'image/png, image/jpeg;q=0.9, image/*;q=0.8', signal);
  const blob = await response.blob();
  return createImageBitmap(blob);
}

/**
 * Fetch one frame uncompressed (explicit VR little endian): {bytes: Uint8Array}.
 * Throws when the archive cannot send it so (the caller falls back to rendered images).
 */
export async function fetchFrame(study, series, instance, frame, { signal } = {}) {
  const target = url(`${resource(study, series, instance)}/frames/${frame}`);
  const response = await get(target, FRAME_ACCEPT, signal);
  const contentType = response.headers.get('Content-Type') || '';
  const buffer = await response.arrayBuffer();
  if (/^multipart\/related/i.test(contentType)) {
    const part = firstPart(new Uint8Array(buffer), contentType);
    const partType = part.headers['content-type'] || 'application/octet-stream';
    if (!/^application\/octet-stream/i.test(partType)) {
      throw new Error(`frame sent as ${partType}, not uncompressed`);
    }
    const syntax = /transfer-syntax=([\d.]+)/i.exec(partType);
    if (syntax && syntax[1] !== EXPLICIT_VR_LITTLE_ENDIAN) {
      throw new Error(`frame sent in transfer syntax ${syntax[1]}`);
    }
    return { bytes: part.body };
  }
  if (/^application\/octet-stream/i.test(contentType)) return { bytes: new Uint8Array(buffer) };
  throw new Error(`unexpected frame content type ${contentType}`);
}

const CRLF = [13, 10];

/** The first body part of a multipart/related message: {headers, body}. */
export function firstPart(bytes, contentType) {
  const match = /boundary=(?:"([^"]+)"|([^;,\s]+))/i.exec(contentType);
  if (!match) throw new Error('multipart response without a boundary');
  const delimiter = ascii(`--${match[1] || match[2]}`);
  const start = indexOf(bytes, delimiter, 0);
  if (start < 0) throw new Error('multipart boundary not found');
  let p = start + delimiter.length;
  if (bytes[p] === 13 && bytes[p + 1] === 10) p += 2;
  const headerEnd = indexOf(bytes, [13, 10, 13, 10], p);
  let headers = {};
  let bodyStart = p;
  if (headerEnd >= 0) {
    headers = parseHeaders(new TextDecoder('latin1').decode(bytes.subarray(p, headerEnd)));
    bodyStart = headerEnd + 4;
  } else if (bytes[p] === 13 && bytes[p + 1] === 10) {
    bodyStart = p + 2; // no headers at all
  }
  const length = Number(headers['content-length']);
  if (Number.isInteger(length) && length >= 0 && bodyStart + length <= bytes.length) {
    return { headers, body: bytes.subarray(bodyStart, bodyStart + length) };
  }
  // The part ends at the next delimiter (CRLF--boundary); for one part, the last one.
  const closing = [...CRLF, ...delimiter];
  let end = lastIndexOf(bytes, closing, bytes.length - closing.length);
  if (end < bodyStart) end = bytes.length;
  const next = indexOf(bytes, closing, bodyStart, end);
  return { headers, body: bytes.subarray(bodyStart, next >= 0 ? next : end) };
}

function parseHeaders(block) {
  const headers = {};
  for (const line of block.split(/\r\n/)) {
    const colon = line.indexOf(':');
    if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  return headers;
}

function ascii(s) {
  return Array.from(s, (c) => c.charCodeAt(0));
}

function indexOf(bytes, needle, from, to = bytes.length) {
  const first = needle[0];
  const last = to - needle.length;
  outer: for (let i = bytes.indexOf(first, from); i >= 0 && i <= last; i = bytes.indexOf(first, i + 1)) {
    for (let j = 1; j < needle.length; j += 1) if (bytes[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

function lastIndexOf(bytes, needle, from) {
  outer: for (let i = Math.min(from, bytes.length - needle.length); i >= 0; i -= 1) {
    for (let j = 0; j < needle.length; j += 1) if (bytes[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}
