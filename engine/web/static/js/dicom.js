// Reading DICOM JSON (PS3.18 F.2): tags, values, person names, dates.

/** Tags used by the viewer, as the 8-hex-digit keys of DICOM JSON. */
export const T = Object.freeze({
  SpecificCharacterSet: '00080005',
  SOPClassUID: '00080016',
  SOPInstanceUID: '00080018',
  StudyDate: '00080020',
  SeriesDate: '00080021',
  StudyTime: '00080030',
  AccessionNumber: '00080050',
  Modality: '00080060',
  ModalitiesInStudy: '00080061',
  ReferringPhysicianName: '00080090',
  StudyDescription: '00081030',
  SeriesDescription: '0008103E',
  PatientName: '00100010',
  PatientID: '00100020',
  PatientBirthDate: '00100030',
  PatientSex: '00100040',
  BodyPartExamined: '00180015',
  SliceThickness: '00180050',
  StudyInstanceUID: '0020000D',
  SeriesInstanceUID: '0020000E',
  StudyID: '00200010',
  SeriesNumber: '00200011',
  InstanceNumber: '00200013',
  ImagePositionPatient: '00200032',
  ImageOrientationPatient: '00200037',
  SliceLocation: '00201041',
  NumberOfStudyRelatedSeries: '00201206',
  NumberOfStudyRelatedInstances: '00201208',
  NumberOfSeriesRelatedInstances: '00201209',
  SamplesPerPixel: '00280002',
  PhotometricInterpretation: '00280004',
  PlanarConfiguration: '00280006',
  NumberOfFrames: '00280008',
  Rows: '00280010',
  Columns: '00280011',
  PixelSpacing: '00280030',
  BitsAllocated: '00280100',
  BitsStored: '00280101',
  HighBit: '00280102',
  PixelRepresentation: '00280103',
  WindowCenter: '00281050',
  WindowWidth: '00281051',
  RescaleIntercept: '00281052',
  RescaleSlope: '00281053',
  WindowCenterWidthExplanation: '00281055',
  VOILUTFunction: '00281056',
  FrameVOILUTSequence: '00289132',
  PixelValueTransformationSequence: '00289145',
  PlanePositionSequence: '00209113',
  PlaneOrientationSequence: '00209116',
  PixelMeasuresSequence: '00289110',
  SharedFunctionalGroupsSequence: '52009229',
  PerFrameFunctionalGroupsSequence: '52009230',
});

/** All values of an attribute (an empty array when absent or empty). */
export function values(ds, tag) {
  const value = ds?.[tag]?.Value;
  return Array.isArray(value) ? value : [];
}

/** The first value of an attribute, or undefined. */
export function first(ds, tag) {
  return values(ds, tag)[0];
}

/** The first value as a finite number (DS values may be strings), or null. */
export function num(ds, tag) {
  const value = first(ds, tag);
  if (value == null || value === '') return null;
  const n = Number(value);
  return Number.isFinite(n) ? n : null;
}

/** All values as finite numbers (non-numbers dropped). */
export function nums(ds, tag) {
  return values(ds, tag).map(Number).filter(Number.isFinite);
}

/** The first value as display text ('' when absent); person names formatted. */
export function text(ds, tag) {
  const value = first(ds, tag);
  if (value == null) return '';
  if (typeof value === 'object') return formatPersonName(value);
  return String(value);
}

/** All values joined for display (e.g. ModalitiesInStudy "CT\\SR" -> "CT, SR"). */
export function textAll(ds, tag, separator = ', ') {
  return values(ds, tag)
    .map((v) => (typeof v === 'object' && v ? formatPersonName(v) : String(v ?? '')))
    .filter(Boolean).join(separator);
}

/** "Family^Given^Middle^Prefix^Suffix" as "Family, Given Middle"; ideographic as fallback. */
export function formatPersonName(pn) {
  const raw = typeof pn === 'string' ? pn : pn?.Alphabetic || pn?.Ideographic || pn?.Phonetic || '';
  const [family = '', given = '', middle = '', prefix = '', suffix = ''] = raw.split('^');
  const rest = [prefix, given, middle].filter(Boolean).join(' ');
  let name = [family, rest].filter(Boolean).join(', ');
  if (suffix) name += ` ${suffix}`;
  return name.trim();
}

/** DA "YYYYMMDD" as "YYYY-MM-DD" (unambiguous everywhere); anything else unchanged. */
export function formatDate(da) {
  const s = String(da ?? '');
  return /^\d{8}$/.test(s) ? `${s.slice(0, 4)}-${s.slice(4, 6)}-${s.slice(6)}` : s;
}

/** TM "HHMMSS.ffffff" as "HH:MM" (or "HH:MM:SS" when `seconds`). */
export function formatTime(tm, seconds = false) {
  const s = String(tm ?? '').replace(/:/g, '');
  if (!/^\d{2,}/.test(s)) return s;
  const parts = [s.slice(0, 2), s.slice(2, 4) || '00'];
  if (seconds) parts.push(s.slice(4, 6) || '00');
  return parts.join(':');
}

/** "YYYY-MM-DD" (an <input type=date> value) as DA "YYYYMMDD". */
export function toDA(isoDate) {
  return String(isoDate ?? '').replace(/-/g, '');
}

/** Compare two attribute values for sorting: numbers numerically, text case-insensitively. */
export function compareValues(a, b) {
  const emptyA = a == null || a === '';
  const emptyB = b == null || b === '';
  if (emptyA || emptyB) return emptyA === emptyB ? 0 : emptyA ? 1 : -1; // empty last
  if (typeof a === 'number' && typeof b === 'number') return a - b;
  return String(a).localeCompare(String(b), undefined, { numeric: true, sensitivity: 'base' });
}

/**
 * An attribute of one frame: from the dataset itself, else from the frame's item of the
 * per-frame functional groups, else from the shared ones (enhanced multi-frame objects).
 */
export function frameAttribute(ds, frameIndex, macroTag, tag) {
  if (ds?.[tag]?.Value?.length) return ds[tag];
  const perFrame = values(ds, T.PerFrameFunctionalGroupsSequence)[frameIndex];
  const shared = first(ds, T.SharedFunctionalGroupsSequence);
  for (const group of [perFrame, shared]) {
    const macro = first(group, macroTag);
    if (macro?.[tag]?.Value?.length) return macro[tag];
  }
  return undefined;
}

/** Numbers of a frame attribute (see frameAttribute). */
export function frameNums(ds, frameIndex, macroTag, tag) {
  const element = frameAttribute(ds, frameIndex, macroTag, tag);
  return (element?.Value ?? []).map(Number).filter(Number.isFinite);
}

/** Strings of a frame attribute (see frameAttribute). */
export function frameStrings(ds, frameIndex, macroTag, tag) {
  const element = frameAttribute(ds, frameIndex, macroTag, tag);
  return (element?.Value ?? []).map((v) => String(v ?? ''));
}
