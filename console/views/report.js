// Daily consolidated report: a date range form, the chart, the table (opening, credits,
// debits, movements, closing per day, exactly as the API returns them) and a CSV download.

import { getDaily } from '../api.js';
import { dailyChart } from '../chart.js';
import { h, replace } from '../dom.js';
import { controller, field, statusLine } from '../forms.js';
import { formatAmount, isNegative } from '../money.js';

/** Days shown when the page opens: the last 30 UTC days, today included. */
const DEFAULT_RANGE_DAYS = 30;
const DAY_MS = 24 * 60 * 60 * 1000;

function utcDate(ms) {
  return new Date(ms).toISOString().slice(0, 10);
}

/** Renders the report of `accountId` into `main`; `query` may hold `from` and `to`. */
export function render(main, ctx, accountId, query) {
  const now = Date.now();
  const from = field({ label: 'From (UTC day)', name: 'from',
    attrs: { type: 'date', required: true,
      value: query.get('from') || utcDate(now - (DEFAULT_RANGE_DAYS - 1) * DAY_MS) } });
  const to = field({ label: 'To (UTC day, included)', name: 'to',
    attrs: { type: 'date', required: true, value: query.get('to') || utcDate(now) } });
  const button = h('button', { type: 'submit', class: 'primary' }, 'Show report');
  const status = statusLine();
  const form = h('form', { class: 'card range', 'aria-labelledby': 'range-title',
    novalidate: true, 'data-form': 'report' },
  h('h2', { id: 'range-title', class: 'visually-hidden' }, 'Date range'),
  h('div', { class: 'inline-fields' }, from.row, to.row, h('div', { class: 'actions' }, button)),
  status);
  const output = h('div', { class: 'report-output', 'aria-live': 'polite' });
  const accountHref = `#/accounts/${encodeURIComponent(accountId)}`;
  replace(main,
    h('h1', { tabindex: '-1' }, 'Daily report ', h('span', { class: 'mono' }, accountId)),
    h('nav', { class: 'page-actions', 'aria-label': 'Report' },
      h('a', { href: accountHref }, '← Back to the account')),
    form, output);

  const ctl = controller(form, { from, to }, { status, button });
  ctl.onSubmit(async () => {
    const range = { from: from.input.value, to: to.input.value };
    const { data } = await getDaily(accountId, range.from, range.to);
    // Keep the range in the address so the page can be bookmarked and reloaded.
    history.replaceState(null, '',
      `${accountHref}/report?${new URLSearchParams(range)}`);
    show(output, data, range);
    return `${(data.days || []).length} days.`;
  });
  form.requestSubmit();
}

function show(output, report, range) {
  // The chart is drawn for the width it will get (the card's padding taken off).
  const chartWidthPx = Math.max(0, output.clientWidth - 34);
  const days = report.days || [];
  const currency = report.currency || '';
  const cols = [
    ['date', 'Day'], ['opening_balance', 'Opening'], ['credits', 'Credits'],
    ['debits', 'Debits'], ['movements', 'Movements'], ['closing_balance', 'Closing'],
  ];
  const table = h('table', { class: 'report', 'data-account': report.account ?? '' },
    h('caption', null, `Daily figures in ${currency}, ${range.from} to ${range.to}`),
    h('thead', null, h('tr', null, cols.map(([key, label]) =>
      h('th', { scope: 'col', class: key === 'date' ? null : 'num' }, label)))),
    h('tbody', null, days.map((day) => h('tr', { 'data-date': day.date },
      cols.map(([key]) => key === 'date'
        ? h('th', { scope: 'row', 'data-key': key }, day.date)
        : h('td', { 'data-key': key, 'data-value': String(day[key] ?? ''),
          class: `num${isNegative(day[key]) ? ' negative' : ''}` },
        key === 'movements' ? String(day[key] ?? '') : formatAmount(day[key])))))));
  const chartBox = h('div', { class: 'chart-box' }, dailyChart(days, currency, chartWidthPx));
  redrawOnResize(chartBox, days, currency);
  const download = h('button', { type: 'button', 'data-action': 'csv' }, 'Download CSV');
  download.addEventListener('click', () => downloadCsv(report, range, cols));
  replace(output,
    h('section', { class: 'card', 'aria-labelledby': 'chart-heading' },
      h('h2', { id: 'chart-heading' }, 'Closing balance, credits and debits'),
      h('div', { class: 'legend', 'aria-hidden': 'true' },
        h('span', { class: 'key key-closing' }, 'Closing balance'),
        h('span', { class: 'key key-credit' }, 'Credits'),
        h('span', { class: 'key key-debit' }, 'Debits')),
      chartBox),
    h('section', { class: 'card', 'aria-labelledby': 'table-heading' },
      h('h2', { id: 'table-heading' }, 'Day by day'),
      h('div', { class: 'table-scroll', tabindex: '0', role: 'region',
        'aria-labelledby': 'table-heading' }, table),
      h('div', { class: 'actions' }, download)));
}

/** Redraws the chart when the window's width changes (a phone turned sideways), until the
 * chart leaves the page. */
function redrawOnResize(chartBox, days, currency) {
  let timer = null;
  let drawnWidthPx = chartBox.clientWidth;
  const onResize = () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      if (!chartBox.isConnected) {
        window.removeEventListener('resize', onResize);
        return;
      }
      const widthPx = chartBox.clientWidth;
      if (Math.abs(widthPx - drawnWidthPx) < 8) return;
      drawnWidthPx = widthPx;
      replace(chartBox, dailyChart(days, currency, widthPx));
    }, 100);
  };
  window.addEventListener('resize', onResize);
}

/** Returns one CSV cell, quoted when needed (RFC 4180). */
function csvCell(value) {
  const text = String(value ?? '');
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

function downloadCsv(report, range, cols) {
  const lines = [cols.map(([key]) => key).join(',')];
  for (const day of report.days || []) lines.push(cols.map(([key]) => csvCell(day[key])).join(','));
  const blob = new Blob([`${lines.join('\r\n')}\r\n`], { type: 'text/csv;charset=utf-8' });
  const url = URL.createObjectURL(blob);
  const safeId = String(report.account ?? 'account').replace(/[^A-Za-z0-9._-]/g, '_');
  const link = h('a', { href: url, download: `saldo-${safeId}-${range.from}-${range.to}.csv`,
    hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
