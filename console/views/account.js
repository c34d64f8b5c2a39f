// Account page: the balances, forms to post a credit or debit entry and to make a transfer,
// and the movements newest first with the running balance, paginated with the API's cursor.

import { getAccount, getMovements, postEntry, postTransfer } from '../api.js';
import { h, replace } from '../dom.js';
import { controller, field, plainWords, statusLine } from '../forms.js';
import { formatAmount, formatSigned, formatTimestamp, isNegative, tidyAmountInput }
  from '../money.js';

/** Movements fetched per page. */
const MOVEMENTS_PAGE_LIMIT = 20;

/** Renders the account `accountId` into `main`. */
export async function render(main, ctx, accountId) {
  const title = h('h1', { tabindex: '-1' }, 'Account ', h('span', { class: 'mono' }, accountId));
  const summary = h('section', { class: 'card summary', 'aria-labelledby': 'summary-title',
    'aria-busy': 'true' },
  h('h2', { id: 'summary-title' }, 'Balances'), h('p', null, 'Loading…'));
  replace(main, title, ctx.takeFlash(), summary);

  let account;
  try {
    ({ data: account } = await getAccount(accountId));
  } catch (error) {
    replace(summary, h('h2', { id: 'summary-title' }, 'Balances'),
      h('p', { class: 'form-status error', role: 'alert' }, plainWords(error)),
      h('p', null, h('a', { href: '#/' }, 'Back to accounts')));
    summary.removeAttribute('aria-busy');
    return;
  }

  const movements = movementsSection(accountId);
  const refresh = async () => {
    const { data } = await getAccount(accountId);
    account = data;
    fillSummary(summary, account);
    await movements.reload();
  };
  fillSummary(summary, account);
  main.append(
    h('nav', { class: 'page-actions', 'aria-label': 'Account' },
      h('a', { href: `#/accounts/${encodeURIComponent(accountId)}/report`, class: 'button' },
        'Daily report'),
      h('button', { type: 'button', 'data-action': 'refresh',
        onclick: () => refresh().catch(() => {}) }, 'Refresh')),
    h('div', { class: 'grid' }, entryForm(account, refresh), transferForm(account, refresh)),
    movements.section,
  );
  await movements.reload();
}

function fillSummary(summary, account) {
  const stat = (label, value, key) => h('div', { class: 'stat' },
    h('dt', null, label),
    h('dd', { 'data-field': key, 'data-value': value ?? '',
      class: isNegative(value) ? 'negative' : null },
    formatAmount(value ?? '—'), ' ', h('span', { class: 'currency' }, account.currency)));
  replace(summary,
    h('h2', { id: 'summary-title' }, 'Balances'),
    h('dl', { class: 'stats' },
      stat('Balance', account.balance, 'balance'),
      stat('Available', account.available, 'available'),
      stat('Held', account.held, 'held'),
      stat('Overdraft limit', account.overdraft_limit, 'overdraft_limit')),
    account.created_at
      ? h('p', { class: 'hint' }, `Opened ${formatTimestamp(account.created_at)}`) : null);
  summary.removeAttribute('aria-busy');
}

function requestIdLine() {
  const output = h('output', { class: 'mono', 'data-request-id': '' });
  const line = h('p', { class: 'hint request-id' },
    'Request ID ', output, ' (sent again on a retry, so nothing posts twice)');
  return { line, output };
}

function entryForm(account, refresh) {
  const credit = h('input', { type: 'radio', name: 'type', value: 'credit', id: 'entry-credit',
    checked: true });
  const debit = h('input', { type: 'radio', name: 'type', value: 'debit', id: 'entry-debit' });
  const typeError = h('p', { class: 'field-error', 'data-error-for': 'type', hidden: true });
  const type = {
    input: credit,
    error: typeError,
    row: h('fieldset', { class: 'field choice' }, h('legend', null, 'Entry type'),
      h('label', { for: 'entry-credit' }, credit, ' Credit (money in)'),
      h('label', { for: 'entry-debit' }, debit, ' Debit (money out)'), typeError),
  };
  const amount = field({ label: `Amount (${account.currency})`, name: 'amount',
    attrs: { required: true, inputmode: 'decimal', autocomplete: 'off', class: 'short',
      placeholder: '0.00' } });
  const description = field({ label: 'Description (optional)', name: 'description',
    attrs: { autocomplete: 'off', maxlength: 200 } });
  const button = h('button', { type: 'submit', class: 'primary' }, 'Post entry');
  const status = statusLine();
  const rid = requestIdLine();
  const form = h('form', { class: 'card', 'aria-labelledby': 'entry-title', novalidate: true,
    'data-form': 'entry' },
  h('h2', { id: 'entry-title' }, 'Post an entry'),
  type.row, amount.row, description.row, rid.line,
  h('div', { class: 'actions' }, button), status);
  const ctl = controller(form, { type, amount, description },
    { status, button, requestIdOutput: rid.output,
      failureSummary: 'Not posted: see the message next to the field.' });
  ctl.onSubmit(async (requestId) => {
    const kind = debit.checked ? 'debit' : 'credit';
    const body = { id: requestId, type: kind, amount: tidyAmountInput(amount.input.value) };
    const text = description.input.value.trim();
    if (text) body.description = text;
    const { status: httpStatus, data } = await postEntry(account.id, body);
    await refresh().catch(() => {});
    const after = data?.balance_after;
    const what = `${kind === 'credit' ? 'Credit' : 'Debit'} of ${formatAmount(body.amount)} ` +
      `${account.currency}`;
    const balance = after != null ? `; balance now ${formatAmount(after)}` : '';
    amount.input.value = '';
    description.input.value = '';
    if (data?.status === 'pending') return `${what} accepted; it is being completed.`;
    return httpStatus === 201 ? `${what} posted${balance}.`
      : `${what} was already posted with this request ID; nothing was posted twice.`;
  });
  return form;
}

function transferForm(account, refresh) {
  const to = field({ label: 'To account ID', name: 'to',
    attrs: { required: true, autocomplete: 'off', spellcheck: 'false', autocapitalize: 'off' } });
  const amount = field({ label: `Amount (${account.currency})`, name: 'amount',
    attrs: { required: true, inputmode: 'decimal', autocomplete: 'off', class: 'short',
      placeholder: '0.00' } });
  const description = field({ label: 'Description (optional)', name: 'description',
    attrs: { autocomplete: 'off', maxlength: 200 } });
  const button = h('button', { type: 'submit' }, 'Send transfer');
  const status = statusLine();
  const rid = requestIdLine();
  const form = h('form', { class: 'card', 'aria-labelledby': 'transfer-title', novalidate: true,
    'data-form': 'transfer' },
  h('h2', { id: 'transfer-title' }, 'Make a transfer'),
  h('p', { class: 'hint' }, 'From this account, in ', account.currency, '.'),
  to.row, amount.row, description.row, rid.line,
  h('div', { class: 'actions' }, button), status);
  const ctl = controller(form, { to, amount, description },
    { status, button, requestIdOutput: rid.output,
      failureSummary: 'Not posted: see the message next to the field.' });
  ctl.onSubmit(async (requestId) => {
    const body = {
      id: requestId,
      from: account.id,
      to: to.input.value.trim(),
      amount: tidyAmountInput(amount.input.value),
      currency: account.currency,
    };
    const text = description.input.value.trim();
    if (text) body.description = text;
    const { status: httpStatus, data } = await postTransfer(body).catch((error) => {
      // The destination is the only account the user typed here.
      if (error.code === 'account_not_found' && !error.field) error.field = 'to';
      throw error;
    });
    await refresh().catch(() => {});
    const what = `Transfer of ${formatAmount(body.amount)} ${account.currency} to ${body.to}`;
    amount.input.value = '';
    description.input.value = '';
    if (data?.status === 'pending') return `${what} accepted; it is being completed.`;
    return httpStatus === 201 ? `${what} committed.`
      : `${what} was already made with this request ID; nothing was moved twice.`;
  });
  return form;
}

/** Returns a movement of the API (`kind` transfer|entry, `direction` in|out, `counterparty`,
 * `amount`, `balance_after`) with direction named as the entry forms name it: 'credit' (money
 * in) or 'debit' (money out). */
function normalizeMovement(m) {
  const direction = m.direction === 'out' || m.direction === 'debit' ? 'debit' : 'credit';
  return {
    id: m.id ?? '',
    kind: m.kind === 'transfer' ? 'transfer' : 'entry',
    direction,
    amount: m.amount,
    balance: m.balance_after,
    counterparty: m.counterparty ?? '',
    description: m.description ?? '',
    at: m.created_at,
  };
}

function movementsSection(accountId) {
  const body = h('tbody');
  const more = h('button', { type: 'button', hidden: true, 'data-action': 'older' },
    'Show older movements');
  const status = statusLine();
  const table = h('table', { class: 'movements', 'aria-describedby': 'movements-title' },
    h('thead', null, h('tr', null,
      h('th', { scope: 'col' }, 'When (UTC)'),
      h('th', { scope: 'col' }, 'Movement'),
      h('th', { scope: 'col', class: 'num' }, 'Amount'),
      h('th', { scope: 'col', class: 'num' }, 'Balance after'))),
    body);
  const section = h('section', { class: 'card', 'aria-labelledby': 'movements-title' },
    h('h2', { id: 'movements-title' }, 'Movements, newest first'), table,
    h('div', { class: 'actions' }, more), status);
  let cursor = null;

  async function loadPage(first) {
    more.disabled = true;
    status.textContent = 'Loading…';
    try {
      const { data } = await getMovements(accountId,
        { limit: MOVEMENTS_PAGE_LIMIT, cursor: first ? null : cursor });
      const list = data.movements ?? [];
      cursor = data.next_cursor ?? null;
      if (first) body.replaceChildren();
      for (const raw of list) body.append(row(normalizeMovement(raw)));
      if (first && list.length === 0) {
        body.append(h('tr', null, h('td', { colspan: 4, class: 'empty' }, 'No movements yet.')));
      }
      more.hidden = !cursor;
      status.textContent = !cursor && data.older_movements_in_stream
        ? 'Older movements are kept in the ledger\'s stream and are not listed here.' : '';
    } catch (error) {
      status.textContent = plainWords(error);
    } finally {
      more.disabled = false;
    }
  }
  more.addEventListener('click', () => loadPage(false));
  return { section, reload: () => loadPage(true) };
}

function row(m) {
  const label = m.kind === 'transfer'
    ? `Transfer ${m.direction === 'credit' ? 'from' : 'to'} ${m.counterparty}`
    : (m.direction === 'credit' ? 'Credit entry' : 'Debit entry');
  return h('tr', { 'data-movement-id': m.id, 'data-direction': m.direction,
    'data-amount': m.amount, 'data-balance': m.balance ?? '' },
  h('td', { 'data-label': 'When' }, formatTimestamp(m.at)),
  h('td', { 'data-label': 'Movement' }, h('span', { class: 'movement-text' }, label,
    m.description ? h('span', { class: 'hint block' }, m.description) : null)),
  h('td', { 'data-label': 'Amount', class: `num ${m.direction}` },
    formatSigned(m.amount, m.direction)),
  h('td', { 'data-label': 'Balance after', class: 'num' }, formatAmount(m.balance ?? '')));
}
