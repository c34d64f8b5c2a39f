// The report's chart, drawn as inline SVG (no library, no CDN): one group of bars per day,
// credits up and debits down from zero, and a line through the daily closing balances. The
// figures shown in tooltips are the API's strings; Number() is used for the scale only.

import { svg } from './dom.js';
import { formatAmount, toNumberForScale } from './money.js';

/** Drawing width when the caller does not say; the SVG scales to its box either way. */
const WIDTH_DEFAULT = 720;
/** Narrowest drawing: below this, labels would collide. */
const WIDTH_MIN = 300;
const MARGIN = { top: 16, right: 12, bottom: 36, left: 56 };
/** Horizontal gridlines (and value labels) drawn on the value axis. */
const TICK_COUNT = 5;

/** Returns "nice" tick values covering [min, max]. */
function ticks(min, max) {
  const span = max - min || Math.abs(max) || 1;
  const rough = span / TICK_COUNT;
  const magnitude = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= rough);
  const out = [];
  for (let v = Math.floor(min / step) * step; v <= max + step / 2; v += step) {
    out.push(Number(v.toPrecision(12)));
  }
  return out;
}

/** Returns a short axis label for a scale value (axis only; figures come from the table). */
function axisLabel(value) {
  const abs = Math.abs(value);
  if (abs >= 1e9) return `${value / 1e9}B`;
  if (abs >= 1e6) return `${value / 1e6}M`;
  if (abs >= 1e4) return `${value / 1e3}k`;
  return String(value);
}

/** Returns the chart of `days` (the API's report rows) in `currency` as an SVG element, drawn
 * for `widthPx` CSS pixels so that its text stays readable on a phone. */
export function dailyChart(days, currency, widthPx = WIDTH_DEFAULT) {
  const WIDTH = Math.max(WIDTH_MIN, Math.round(widthPx) || WIDTH_DEFAULT);
  const HEIGHT = WIDTH < 500 ? 240 : 300;
  const closing = days.map((d) => toNumberForScale(d.closing_balance));
  const credits = days.map((d) => toNumberForScale(d.credits));
  const debits = days.map((d) => toNumberForScale(d.debits));
  const all = [0, ...closing, ...credits, ...debits.map((d) => -Math.abs(d))];
  const tickValues = ticks(Math.min(...all), Math.max(...all));
  const low = tickValues[0];
  const high = tickValues[tickValues.length - 1];
  const plotW = WIDTH - MARGIN.left - MARGIN.right;
  const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
  const y = (v) => MARGIN.top + plotH - ((v - low) / (high - low || 1)) * plotH;
  const slot = plotW / Math.max(days.length, 1);
  const x = (i) => MARGIN.left + slot * i + slot / 2;
  const barW = Math.max(1, Math.min(18, slot * 0.35));

  const grid = tickValues.map((v) => svg('g', { class: 'tick' },
    svg('line', { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: y(v), y2: y(v),
      class: v === 0 ? 'axis-zero' : 'gridline' }),
    svg('text', { x: MARGIN.left - 6, y: y(v) + 4, 'text-anchor': 'end', class: 'axis-label' },
      axisLabel(v))));

  const labelEvery = Math.ceil(days.length / Math.max(3, Math.floor(plotW / 80)));
  const last = days.length - 1;
  // The last day gets a label too, unless it would run into the previous one.
  const labelled = (i) => i % labelEvery === 0 ||
    (i === last && (labelEvery === 1 || last % labelEvery >= labelEvery * 0.6));
  const bars = days.map((d, i) => svg('g', { class: 'day', 'data-date': d.date },
    svg('title', null, `${d.date}: credits ${formatAmount(d.credits)}, debits ` +
      `${formatAmount(d.debits)}, closing ${formatAmount(d.closing_balance)} ${currency}`),
    svg('rect', { class: 'bar-credit', x: x(i) - barW, width: barW,
      y: y(Math.abs(credits[i])), height: Math.max(0, y(0) - y(Math.abs(credits[i]))) }),
    svg('rect', { class: 'bar-debit', x: x(i), width: barW,
      y: y(0), height: Math.max(0, y(-Math.abs(debits[i])) - y(0)) }),
    labelled(i)
      ? svg('text', { x: x(i), y: HEIGHT - MARGIN.bottom + 16, 'text-anchor': 'middle',
        class: 'axis-label' }, d.date.slice(5))
      : null));

  const points = closing.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
  const line = svg('polyline', { class: 'line-closing', points });
  const dots = days.length <= 62
    ? closing.map((v, i) => svg('circle', { class: 'dot-closing', cx: x(i), cy: y(v), r: 3 }))
    : [];

  const firstDay = days[0];
  const lastDay = days[last];
  const titleId = 'chart-title';
  const descId = 'chart-desc';
  return svg('svg', { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: 'chart', role: 'img',
    'aria-labelledby': `${titleId} ${descId}`, 'data-days': days.length },
  svg('title', { id: titleId }, `Daily closing balance, credits and debits (${currency})`),
  svg('desc', { id: descId }, days.length === 0 ? 'No days in this range.'
    : `From ${firstDay.date} to ${lastDay.date}: closing balance went from ` +
      `${formatAmount(firstDay.closing_balance)} to ${formatAmount(lastDay.closing_balance)} ` +
      `${currency}. The table below lists every figure.`),
  grid, bars, line, dots);
}
