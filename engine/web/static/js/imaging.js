// Pixel handling for client-side windowing: the image pixel module of a frame, stored
// values through a lookup table (modality rescale, then VOI window, then photometric
// inversion) into grey levels, written into an ImageData.

import { T, frameNums, frameStrings, num, text } from './dicom.js';

/** What is needed to display one frame of an instance (from its metadata). */
export function pixelModule(meta, frameIndex = 0) {
  const rescale = (tag) => frameNums(meta, frameIndex, T.PixelValueTransformationSequence, tag)[0];
  const centers = frameNums(meta, frameIndex, T.FrameVOILUTSequence, T.WindowCenter);
  const widths = frameNums(meta, frameIndex, T.FrameVOILUTSequence, T.WindowWidth);
  const explanations = frameStrings(meta, frameIndex, T.FrameVOILUTSequence,
    T.WindowCenterWidthExplanation);
  const windows = [];
  for (let i = 0; i < Math.min(centers.length, widths.length); i += 1) {
    if (widths[i] >= 1) windows.push({ center: centers[i], width: widths[i], explanation: explanations[i] || '' });
  }
  const voiFunction = (frameStrings(meta, frameIndex, T.FrameVOILUTSequence, T.VOILUTFunction)[0]
    || 'LINEAR').toUpperCase();
  const spacing = frameNums(meta, frameIndex, T.PixelMeasuresSequence, T.PixelSpacing);
  const bitsAllocated = num(meta, T.BitsAllocated) ?? 16;
  return {
    rows: num(meta, T.Rows) ?? 0,
    columns: num(meta, T.Columns) ?? 0,
    samples: num(meta, T.SamplesPerPixel) ?? 1,
    photometric: (text(meta, T.PhotometricInterpretation) || 'MONOCHROME2').trim().toUpperCase(),
    bitsAllocated,
    bitsStored: num(meta, T.BitsStored) ?? bitsAllocated,
    signed: num(meta, T.PixelRepresentation) === 1,
    slope: rescale(T.RescaleSlope) ?? 1,
    intercept: rescale(T.RescaleIntercept) ?? 0,
    windows,
    voiFunction,
    // Height of a pixel relative to its width (PixelSpacing is row spacing \ column spacing).
    aspect: spacing.length === 2 && spacing[0] > 0 && spacing[1] > 0 ? spacing[0] / spacing[1] : 1,
    frames: num(meta, T.NumberOfFrames) ?? 1,
  };
}

/** Whether the viewer can window this frame itself (grey-scale, 8 or 16 bits a sample). */
export function canWindowLocally(pm) {
  return pm.samples === 1 && /^MONOCHROME[12]$/.test(pm.photometric)
    && (pm.bitsAllocated === 8 || pm.bitsAllocated === 16)
    && pm.rows > 0 && pm.columns > 0 && pm.bitsStored <= pm.bitsAllocated;
}

const tables = new Map(); // pixel encoding -> Float32Array (stored word -> modality value)

/** Modality value of every stored word of an encoding (shared by the frames that use it). */
function modalityTable(pm) {
  const key = `${pm.bitsAllocated}/${pm.bitsStored}/${pm.signed ? 's' : 'u'}/${pm.slope}/${pm.intercept}`;
  let table = tables.get(key);
  if (!table) {
    const size = 1 << pm.bitsAllocated;
    table = new Float32Array(size);
    const mask = (1 << pm.bitsStored) - 1;
    const signBit = 1 << (pm.bitsStored - 1);
    for (let word = 0; word < size; word += 1) {
      let stored = word & mask;
      if (pm.signed && stored & signBit) stored -= 1 << pm.bitsStored;
      table[word] = stored * pm.slope + pm.intercept;
    }
    if (tables.size > 16) tables.clear();
    tables.set(key, table);
    table.key = key;
  }
  return table;
}

/**
 * Decode the bytes of one uncompressed frame into stored words plus the table that maps
 * each word to its modality value. Returns {words, rows, columns, modality, min, max, bytes}.
 */
export function decodeFrame(bytes, pm) {
  const count = pm.rows * pm.columns;
  const bytesPerSample = pm.bitsAllocated / 8;
  if (bytes.length < count * bytesPerSample) {
    throw new Error(`frame has ${bytes.length} bytes, expected ${count * bytesPerSample}`);
  }
  // Copy into an aligned buffer of its own (the part may start at an odd offset).
  const own = bytes.slice(0, count * bytesPerSample);
  const words = pm.bitsAllocated === 16 ? new Uint16Array(own.buffer) : own;
  const modality = modalityTable(pm);
  // Range of the modality values present (for a window when the file names none).
  const seen = new Uint8Array(modality.length);
  for (let i = 0; i < count; i += 1) seen[words[i]] = 1;
  let min = Infinity;
  let max = -Infinity;
  for (let word = 0; word < seen.length; word += 1) {
    if (seen[word]) {
      const v = modality[word];
      if (v < min) min = v;
      if (v > max) max = v;
    }
  }
  if (min > max) { min = 0; max = 0; }
  return { words, rows: pm.rows, columns: pm.columns, modality, min, max, bytes: own.length };
}

/** Window covering the whole range of a decoded frame. */
export function fullRangeWindow(frame) {
  const width = Math.max(frame.max - frame.min, 1);
  return { center: frame.min + width / 2, width };
}

/** VOI function (PS3.3 C.11.2.1.2) of a modality value, as a grey level 0..255. */
export function voiFunction(name, center, width) {
  if (name === 'SIGMOID') {
    return (x) => 255 / (1 + Math.exp(-4 * (x - center) / width));
  }
  if (name === 'LINEAR_EXACT') {
    const low = center - width / 2;
    return (x) => (x <= low ? 0 : x > center + width / 2 ? 255 : ((x - low) / width) * 255);
  }
  const w = Math.max(width, 1);
  const low = center - 0.5 - (w - 1) / 2;
  const high = center - 0.5 + (w - 1) / 2;
  return (x) => (x <= low ? 0 : x > high ? 255 : ((x - (center - 0.5)) / (w - 1) + 0.5) * 255);
}

const luts = new Map();

/** Grey level of every stored word of a frame under a window (a lookup table, reused). */
export function buildLut(frame, pm, voi, invert = false) {
  const name = voi.function || pm.voiFunction;
  const flip = (pm.photometric === 'MONOCHROME1') !== Boolean(invert);
  const key = `${frame.modality.key}|${name}|${voi.center}|${voi.width}|${flip}`;
  let lut = luts.get(key);
  if (lut) return lut;
  const fn = voiFunction(name, voi.center, voi.width);
  lut = new Uint8ClampedArray(frame.modality.length);
  for (let word = 0; word < lut.length; word += 1) {
    const grey = fn(frame.modality[word]);
    lut[word] = flip ? 255 - grey : grey;
  }
  if (luts.size >= 8) luts.delete(luts.keys().next().value);
  luts.set(key, lut);
  return lut;
}

/** Write a frame through a lookup table into an ImageData of the same size. */
export function applyLut(frame, lut, imageData) {
  const { words } = frame;
  const out = imageData.data;
  for (let i = 0, o = 0; i < words.length; i += 1, o += 4) {
    const grey = lut[words[i]];
    out[o] = grey;
    out[o + 1] = grey;
    out[o + 2] = grey;
    out[o + 3] = 255;
  }
  return imageData;
}
