// Small DOM helpers. Text always goes in as text nodes (never innerHTML), so
// values from the archive cannot inject markup.

/** Create an element: h('a', {href: '#/', class: 'x', onclick: fn}, 'text', child, ...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value == null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key in PROPERTIES) el[PROPERTIES[key]] = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

const PROPERTIES = { value: 'value', checked: 'checked' };

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

/** Replace an element's children. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** Announce a short message to screen readers (the polite live region). */
export function announce(message) {
  const status = document.getElementById('status');
  if (status) status.textContent = message;
}

/** Show (or, with an empty message, hide) the error banner. */
export function showError(message) {
  const banner = document.getElementById('error');
  if (!banner) return;
  banner.textContent = message || '';
  banner.hidden = !message;
}

/** True when a key event is typed into a field (and must not be taken as a shortcut). */
export function typingInField(event) {
  const target = event.target;
  if (!(target instanceof Element)) return false;
  if (target.isContentEditable) return true;
  if (target.tagName === 'TEXTAREA' || target.tagName === 'SELECT') return true;
  if (target.tagName !== 'INPUT') return false;
  return !['button', 'checkbox', 'radio', 'range', 'submit', 'reset'].includes(target.type);
}

/** Whether a modal dialog is open (its keys are its own, not the page's shortcuts). */
export function dialogOpen() {
  return document.querySelector('dialog[open]') !== null;
}

/** Call `fn` for `type` events on `target` until the returned function is called. */
export function listen(target, type, fn, options) {
  target.addEventListener(type, fn, options);
  return () => target.removeEventListener(type, fn, options);
}
