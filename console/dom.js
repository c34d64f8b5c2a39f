// DOM helpers. The console never assigns HTML strings (Trusted Types forbids it): every node is
// built with createElement and every text goes through textContent, so API data cannot inject
// markup.

const SVG_NS = 'http://www.w3.org/2000/svg';

/** Returns a new element `tag` with `attrs` (`class`, `for`, aria-*, data-*, on* handlers as
 * functions, booleans as present/absent) and `children` (nodes, strings, arrays, null). */
export function h(tag, attrs = {}, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** Returns a new SVG element, as `h` does for HTML. */
export function svg(tag, attrs = {}, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

function build(el, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      el.addEventListener(name.slice(2), value);
    } else if (value === true) {
      el.setAttribute(name, '');
    } else {
      el.setAttribute(name, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

/** Replaces the children of `el` with `children`. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

let idSeq = 0;
/** Returns a document-unique element ID with `prefix`, for label/aria wiring. */
export function uid(prefix) {
  idSeq += 1;
  return `${prefix}-${idSeq}`;
}
