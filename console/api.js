// The console's only way to the ledger: the public HTTP API under /v1, same origin. The bearer
// token lives in this module's memory and nowhere else (not localStorage, not sessionStorage,
// not a cookie), so closing or reloading the tab signs the user out.

/** How long one API call may take before the console reports a network error. */
const REQUEST_TIMEOUT_MS = 15_000;

let bearerToken = null;
const tokenListeners = new Set();

/** Sets (or with null, forgets) the bearer token sent with every API call. */
export function setToken(token) {
  bearerToken = token ? String(token).trim() : null;
  for (const listener of tokenListeners) listener(bearerToken);
}

/** Returns true when a bearer token is held. */
export function hasToken() {
  return bearerToken !== null;
}

/** Returns the token's readable claims (subject, scopes, expiry) for display only; the server
 * verifies the token, the console never trusts these claims for anything. */
export function tokenClaims() {
  if (!bearerToken) return null;
  try {
    const payload = bearerToken.split('.')[1];
    const binary = atob(payload.replace(/-/g, '+').replace(/_/g, '/'));
    const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return null;
  }
}

const unauthorizedListeners = new Set();

/** Calls `listener()` when the API answers 401 to a request that carried the token (it has
 * expired or been revoked). */
export function onUnauthorized(listener) {
  unauthorizedListeners.add(listener);
}

/** Calls `listener(token)` whenever the token changes. */
export function onTokenChange(listener) {
  tokenListeners.add(listener);
}

/** An API failure: a problem+json response, or no response at all (status 0). */
export class ApiError extends Error {
  constructor({ status, code, title, detail, field, retryable, problem }) {
    super(detail || title || code || `HTTP ${status}`);
    /** HTTP status, 0 when the request never got an answer. */
    this.status = status;
    /** The API's stable error code (`insufficient_funds`, …) or `network_error`. */
    this.code = code;
    this.title = title;
    this.detail = detail;
    /** The request field the error concerns, when the API names one. */
    this.field = field;
    /** True when the same request may be sent again unchanged (same idempotency ID). */
    this.retryable = retryable;
    this.problem = problem;
  }
}

/** Returns the field a problem names, whichever of the usual shapes the API uses. */
function problemField(problem) {
  if (!problem || typeof problem !== 'object') return null;
  if (typeof problem.field === 'string') return problem.field;
  if (typeof problem.pointer === 'string') return problem.pointer.replace(/^\/+/, '');
  const lists = [problem.errors, problem.invalid_params, problem['invalid-params']];
  for (const list of lists) {
    if (Array.isArray(list) && list.length > 0) {
      const first = list[0];
      const name = first.field ?? first.name ?? first.pointer;
      if (typeof name === 'string') return name.replace(/^[#/]+/, '');
    }
  }
  if (Array.isArray(problem.fields) && typeof problem.fields[0] === 'string') {
    return problem.fields[0];
  }
  return null;
}

/** Sends one API request and returns `{ status, data, headers }`, or throws an ApiError.
 * `auth: false` sends no token (used to learn the server's auth mode); `probe: true` means a
 * 401 is an expected answer, not a sign that the session ended. */
export async function request(method, path,
  { body, idempotencyKey, auth = true, probe = false } = {}) {
  const headers = { Accept: 'application/json, application/problem+json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (auth && bearerToken) headers.Authorization = `Bearer ${bearerToken}`;
  if (idempotencyKey) headers['Idempotency-Key'] = idempotencyKey;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'omit',
      cache: 'no-store',
      redirect: 'error',
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    });
  } catch (error) {
    throw new ApiError({
      status: 0,
      code: 'network_error',
      title: 'No answer from saldo',
      detail: error && error.name === 'TimeoutError' ? 'The request timed out.' : '',
      retryable: true,
    });
  }
  const contentType = response.headers.get('Content-Type') || '';
  let data = null;
  if (contentType.includes('json')) {
    try {
      data = await response.json();
    } catch {
      data = null;
    }
  } else {
    const text = await response.text().catch(() => '');
    data = text ? { detail: text.slice(0, 300) } : null;
  }
  if (response.status === 401 && auth && bearerToken && !probe) {
    for (const listener of unauthorizedListeners) listener();
  }
  if (!response.ok) {
    const problem = data && typeof data === 'object' ? data : {};
    throw new ApiError({
      status: response.status,
      code: problem.code || `http_${response.status}`,
      title: problem.title,
      detail: problem.detail,
      field: problemField(problem),
      retryable: response.status >= 500 || response.status === 429 || response.status === 408,
      problem,
    });
  }
  return { status: response.status, data, headers: response.headers };
}

const enc = encodeURIComponent;

/** Returns the account `id`. */
export function getAccount(id) {
  return request('GET', `/v1/accounts/${enc(id)}`);
}

/** Opens an account; 201 when new, 200 when the same one already existed. */
export function openAccount(fields) {
  return request('POST', '/v1/accounts', { body: fields });
}

/** Posts a credit or debit entry; `fields.id` is the idempotency ID (the API's own key, so no
 * `Idempotency-Key` header is needed). */
export function postEntry(accountId, fields) {
  return request('POST', `/v1/accounts/${enc(accountId)}/entries`, { body: fields });
}

/** Makes a transfer; `fields.id` is the idempotency ID. */
export function postTransfer(fields) {
  return request('POST', '/v1/transfers', { body: fields });
}

/** Returns one page of movements, newest first, after `cursor` (null for the first page). */
export function getMovements(accountId, { limit, cursor }) {
  const query = new URLSearchParams({ limit: String(limit) });
  if (cursor) query.set('cursor', cursor);
  return request('GET', `/v1/accounts/${enc(accountId)}/movements?${query}`);
}

/** Returns the daily consolidated report from `from` to `to` (YYYY-MM-DD, inclusive). */
export function getDaily(accountId, from, to) {
  const query = new URLSearchParams({ from, to });
  return request('GET', `/v1/accounts/${enc(accountId)}/daily?${query}`);
}
