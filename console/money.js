// Money is a decimal string from the API ("1234.50", "-20.00"). The console never does float
// arithmetic on it: it only regroups the digits for reading and flips a sign for display. The
// chart converts to Number for its scale only (toNumberForScale), never for a figure shown.

const DECIMAL = /^(-?)(\d+)(\.\d+)?$/;

/** Returns `amount` with thousands separators ("1234567.5" -> "1,234,567.5"); any string the
 * API sends that is not a plain decimal is returned unchanged. */
export function formatAmount(amount) {
  const text = String(amount ?? '');
  const match = DECIMAL.exec(text);
  if (!match) return text;
  const [, sign, whole, fraction = ''] = match;
  const grouped = whole.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  return `${sign === '-' ? '\u2212' : ''}${grouped}${fraction}`;
}

/** Returns `amount` formatted with an explicit sign: "+" for a credit, "−" for a debit. */
export function formatSigned(amount, direction) {
  const text = String(amount ?? '');
  const unsigned = text.startsWith('-') ? text.slice(1) : text;
  const sign = direction === 'debit' ? '\u2212' : '+';
  return `${sign}${formatAmount(unsigned)}`;
}

/** Returns true when `amount` is negative ("-0.01"); a string test, no arithmetic. */
export function isNegative(amount) {
  return /^-\d*[1-9]/.test(String(amount ?? '').replace('.', ''));
}

/** Returns `amount` as a Number, for a chart's scale only: never shown, never summed. */
export function toNumberForScale(amount) {
  const n = Number(amount);
  return Number.isFinite(n) ? n : 0;
}

/** Returns what the user typed as an amount with spaces removed ("1 000.50" -> "1000.50").
 * Commas are left alone: "12,50" is ambiguous, so the API rejects it and the user sees why.
 * Validation is the API's (it knows each currency's scale). */
export function tidyAmountInput(text) {
  return String(text).replace(/\s+/g, '');
}

/** Returns an API timestamp for display: RFC 3339 in UTC becomes "2026-11-23 06:30:12 UTC"
 * (the daily report's days are UTC days too); anything else is shown as sent. */
export function formatTimestamp(value) {
  if (typeof value === 'number' && Number.isFinite(value)) {
    // Epoch milliseconds (or seconds, when too small to be milliseconds).
    const ms = value < 1e11 ? value * 1000 : value;
    return formatTimestamp(new Date(ms).toISOString());
  }
  const text = String(value ?? '');
  const match = /^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]00:?00)$/i.exec(text);
  return match ? `${match[1]} ${match[2]} UTC` : text;
}
