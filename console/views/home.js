// Home: find an account by ID, or open a new one.

import { getAccount, openAccount } from '../api.js';
import { h, replace } from '../dom.js';
import { controller, field, statusLine } from '../forms.js';
import { tidyAmountInput } from '../money.js';

/** Renders the home page into `main`. */
export function render(main, ctx) {
  replace(main,
    h('h1', { tabindex: '-1' }, 'Accounts'),
    h('div', { class: 'grid' }, findCard(ctx), openCard(ctx)),
  );
}

function findCard(ctx) {
  const id = field({ label: 'Account ID', name: 'id',
    attrs: { required: true, autocomplete: 'off', spellcheck: 'false', autocapitalize: 'off' } });
  const button = h('button', { type: 'submit', class: 'primary' }, 'Find account');
  const status = statusLine();
  const form = h('form', { class: 'card', 'aria-labelledby': 'find-title', novalidate: true,
    'data-form': 'find' },
  h('h2', { id: 'find-title' }, 'Find an account'), id.row,
  h('div', { class: 'actions' }, button), status);
  const ctl = controller(form, { id }, { status, button });
  ctl.onSubmit(async () => {
    const accountId = id.input.value.trim();
    if (!accountId) {
      throw Object.assign(new Error(), { field: 'id', plain: 'Enter an account ID.' });
    }
    await getAccount(accountId).catch((error) => {
      if (error.code === 'account_not_found' || error.status === 404) error.field = 'id';
      throw error;
    });
    ctx.navigate(`#/accounts/${encodeURIComponent(accountId)}`);
    return 'Found.';
  });
  return form;
}

function openCard(ctx) {
  const id = field({ label: 'New account ID', name: 'id',
    hint: 'Your own identifier for the account, e.g. merchant-42-eur.',
    attrs: { required: true, autocomplete: 'off', spellcheck: 'false', autocapitalize: 'off' } });
  const currency = field({ label: 'Currency', name: 'currency',
    hint: 'ISO 4217 code, e.g. EUR, USD, BRL.',
    attrs: { required: true, value: 'EUR', autocomplete: 'off', maxlength: 3,
      autocapitalize: 'characters', class: 'short' } });
  const overdraft = field({ label: 'Overdraft limit (optional)', name: 'overdraft_limit',
    hint: 'How far below zero the balance may go; empty means none.',
    attrs: { inputmode: 'decimal', autocomplete: 'off', class: 'short' } });
  const button = h('button', { type: 'submit' }, 'Open account');
  const status = statusLine();
  const form = h('form', { class: 'card', 'aria-labelledby': 'open-title', novalidate: true,
    'data-form': 'open-account' },
  h('h2', { id: 'open-title' }, 'Open an account'),
  id.row, currency.row, overdraft.row, h('div', { class: 'actions' }, button), status);
  const ctl = controller(form, { id, currency, overdraft_limit: overdraft }, { status, button });
  ctl.onSubmit(async () => {
    const body = {
      id: id.input.value.trim(),
      currency: currency.input.value.trim().toUpperCase(),
    };
    const limit = tidyAmountInput(overdraft.input.value);
    if (limit) body.overdraft_limit = limit;
    const { status: httpStatus } = await openAccount(body);
    ctx.flash(httpStatus === 201 ? `Account ${body.id} opened.`
      : `Account ${body.id} already existed with these settings.`);
    ctx.navigate(`#/accounts/${encodeURIComponent(body.id)}`);
    return 'Opened.';
  });
  return form;
}
