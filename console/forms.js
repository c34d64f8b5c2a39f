// Form plumbing shared by every view: labelled fields with an error slot each, API errors in
// plain words next to the field they concern, and the idempotent submit.
//
// Idempotency: a posting form draws its request ID when it opens (crypto.randomUUID()) and
// sends that same ID until the API gives a definite answer. While a request is in flight the
// submit button is disabled and further submits are ignored; after a network error, a timeout,
// 429 or 5xx the ID is kept, so pressing the button again is a safe retry that cannot post
// twice. Only a definite answer (2xx, or a 4xx rejection) draws a new ID for the next posting.

import { h, uid } from './dom.js';

/** Plain words for each API error code (problem+json `code`). */
const PLAIN_WORDS = {
  invalid_request: 'This value is not accepted.',
  unauthenticated: 'You are not signed in, or your token has expired. Sign in again.',
  forbidden: 'Your token does not allow this action on this account.',
  account_not_found: 'There is no account with this ID.',
  transfer_not_found: 'There is no transfer with this ID.',
  id_conflict: 'This request ID was already used with different details, so an earlier ' +
    'attempt may have been recorded. Check the movements before posting again.',
  account_exists: 'An account with this ID already exists, with different settings.',
  payload_too_large: 'The request is too large.',
  insufficient_funds: 'Not enough funds: the amount is more than the available balance plus ' +
    'the overdraft limit.',
  currency_mismatch: 'The currencies do not match: both accounts must use the same currency.',
  same_account: 'An account cannot transfer to itself: choose another account.',
  invalid_amount: 'The amount is not valid: it must be positive, with no more decimals than ' +
    'the currency allows.',
  rate_limited: 'Too many requests right now. Wait a moment and try again.',
  unavailable: 'The ledger is busy or restarting. Try again in a moment.',
  network_error: 'Could not reach saldo. Check the connection and try again.',
};

/** The form field each error code concerns when the API does not name one. */
const FIELD_OF_CODE = {
  insufficient_funds: 'amount',
  invalid_amount: 'amount',
  same_account: 'to',
  currency_mismatch: 'to',
  account_exists: 'id',
};

/** Returns a plain-words sentence for an ApiError (or any Error). */
export function plainWords(error) {
  if (error.code === 'invalid_request' && error.detail && !error.plain) {
    return `Not accepted: ${error.detail}.`;
  }
  const base = error.plain || PLAIN_WORDS[error.code] || error.title || error.message ||
    'Something went wrong.';
  const detail = error.detail && error.detail !== base ? ` (${error.detail})` : '';
  const retry = error.retryable && error.code !== 'network_error' && error.status
    ? ` [HTTP ${error.status}]` : '';
  return `${base}${detail}${retry}`;
}

/** Returns an idempotency ID: a UUID v4 (crypto.randomUUID, or built from
 * crypto.getRandomValues on a page that is not a secure context). */
export function newRequestId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-` +
    hex.slice(20);
}

/** Returns a labelled field: `{ row, input, error }`. `control` is 'input', 'select' or
 * 'textarea'; `attrs` go on the control; `hint` is read by screen readers with the field. */
export function field({ label, name, control = 'input', attrs = {}, hint, options }) {
  const id = uid(`f-${name}`);
  const errorId = `${id}-error`;
  const hintId = hint ? `${id}-hint` : null;
  const describedBy = [hintId, errorId].filter(Boolean).join(' ');
  const input = control === 'select'
    ? h('select', { id, name, 'aria-describedby': describedBy, ...attrs },
      (options || []).map(([value, text]) => h('option', { value }, text)))
    : h(control, { id, name, 'aria-describedby': describedBy, ...attrs });
  const error = h('p', { id: errorId, class: 'field-error', 'data-error-for': name, hidden: true });
  const row = h('div', { class: 'field' },
    h('label', { for: id }, label),
    hint ? h('p', { id: hintId, class: 'hint' }, hint) : null,
    input,
    error);
  return { row, input, error };
}

/** Returns a form controller for `form` whose fields are `fields` ({ name: field() }):
 * shows errors next to fields (and `failureSummary` in the status line), a status line, and
 * runs `submit` idempotently. */
export function controller(form, fields,
  { status, button, requestIdOutput, failureSummary = 'See the message next to the field.' }) {
  let requestId = newRequestId();
  let inFlight = false;
  if (requestIdOutput) requestIdOutput.textContent = requestId;

  function clearErrors() {
    for (const f of Object.values(fields)) {
      f.error.hidden = true;
      f.error.textContent = '';
      f.input.removeAttribute('aria-invalid');
    }
    status.textContent = '';
    status.className = 'form-status';
    status.removeAttribute('role');
  }

  function showStatus(text, kind) {
    status.textContent = text;
    status.className = `form-status ${kind}`;
    status.setAttribute('role', kind === 'error' ? 'alert' : 'status');
  }

  /** Shows `error` next to the field it concerns, or in the form's status line. */
  function showError(error) {
    const name = error.field || FIELD_OF_CODE[error.code];
    const target = name && fields[name];
    if (target) {
      target.error.textContent = plainWords(error);
      target.error.hidden = false;
      target.input.setAttribute('aria-invalid', 'true');
      target.input.focus();
      showStatus(failureSummary, 'error');
    } else {
      showStatus(plainWords(error), 'error');
    }
  }

  function renewRequestId() {
    requestId = newRequestId();
    if (requestIdOutput) requestIdOutput.textContent = requestId;
  }

  /** Wires `submit(requestId)`; it returns a success message or throws an ApiError. */
  function onSubmit(submit) {
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      if (inFlight) return;
      inFlight = true;
      button.disabled = true;
      form.setAttribute('aria-busy', 'true');
      clearErrors();
      showStatus('Sending…', 'pending');
      try {
        const message = await submit(requestId);
        renewRequestId();
        showStatus(message, 'ok');
      } catch (error) {
        if (!error.retryable) renewRequestId();
        showError(error);
        if (error.retryable) {
          status.append(' Pressing the button again retries safely: it cannot post twice.');
        }
      } finally {
        inFlight = false;
        button.disabled = false;
        form.removeAttribute('aria-busy');
      }
    });
  }

  return { onSubmit, showError, clearErrors, showStatus, get requestId() { return requestId; } };
}

/** Returns a form's status line: announced to screen readers when it changes. */
export function statusLine() {
  return h('p', { class: 'form-status', 'aria-live': 'polite' });
}
