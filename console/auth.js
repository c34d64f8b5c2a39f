// Sign-in. The console learns the server's auth mode by calling an API route without a token:
// 401 means `--auth jwt`, anything else means `--auth none`. With jwt it takes either a pasted
// bearer token or runs the OAuth2 authorization-code flow with PKCE (RFC 7636) against the
// issuer named in /console/config.json. The access token is kept in memory only (api.js).
// Only the PKCE verifier and state survive the round trip to the issuer, in sessionStorage,
// and they are deleted as soon as the issuer sends the user back.

import { request, setToken } from './api.js';

const PKCE_STORAGE_KEY = 'saldo.console.pkce';
/** An account ID that is never opened; asking for it without a token reveals the auth mode. */
const PROBE_ACCOUNT_ID = 'console-auth-probe';

/** Returns 'jwt' when the API refuses a request without a token, 'none' otherwise. */
export async function detectAuthMode() {
  try {
    await request('GET', `/v1/accounts/${PROBE_ACCOUNT_ID}`, { auth: false, probe: true });
    return 'none';
  } catch (error) {
    if (error.status === 401) return 'jwt';
    if (error.status === 0) throw error;
    return 'none';
  }
}

/** Returns null when the API accepts the current token (any answer but 401), or the API's
 * reason for refusing it. */
export async function tokenRefusal() {
  try {
    await request('GET', `/v1/accounts/${PROBE_ACCOUNT_ID}`, { probe: true });
    return null;
  } catch (error) {
    if (error.status === 0) throw error;
    return error.status === 401 ? (error.detail || 'refused') : null;
  }
}

/** Returns the console's server-side configuration ({ oauth: {...} | null }). */
export async function loadConfig() {
  try {
    const response = await fetch('config.json', { cache: 'no-store', credentials: 'omit' });
    if (!response.ok) return { oauth: null };
    return await response.json();
  } catch {
    return { oauth: null };
  }
}

/** Returns `bytes` in base64url without padding. */
export function base64url(bytes) {
  let binary = '';
  for (const byte of new Uint8Array(bytes)) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/** Returns the S256 code challenge of `verifier` (RFC 7636 section 4.2). */
export async function codeChallenge(verifier) {
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier));
  return base64url(digest);
}

/** Returns a fresh random string of `byteCount` random bytes, base64url-encoded. */
function randomToken(byteCount) {
  return base64url(crypto.getRandomValues(new Uint8Array(byteCount)));
}

/** Returns the redirect URI registered with the issuer: this page without query or hash. */
export function redirectUri() {
  return `${location.origin}${location.pathname}`;
}

/** Sends the browser to the issuer's authorization endpoint; `returnRoute` is where to come
 * back to inside the console. */
export async function beginOAuthSignIn(oauth, returnRoute) {
  if (!crypto.subtle) {
    throw new Error('Single sign-on needs a secure page (https or localhost).');
  }
  const verifier = randomToken(32);
  const state = randomToken(16);
  sessionStorage.setItem(PKCE_STORAGE_KEY, JSON.stringify({ verifier, state, returnRoute }));
  const url = new URL(oauth.authorize_url);
  url.search = new URLSearchParams({
    response_type: 'code',
    client_id: oauth.client_id,
    redirect_uri: redirectUri(),
    scope: oauth.scope,
    state,
    code_challenge: await codeChallenge(verifier),
    code_challenge_method: 'S256',
  }).toString();
  location.assign(url.toString());
}

/** Finishes the OAuth flow when the issuer has just sent the user back (`?code=&state=`):
 * exchanges the code for a token, keeps it in memory, and cleans the address bar. Returns
 * `{ returnRoute }` on success, null when this page load is not a callback, or throws. */
export async function completeOAuthSignIn(oauth) {
  const params = new URLSearchParams(location.search);
  if (!params.has('code') && !params.has('error')) return null;
  const saved = JSON.parse(sessionStorage.getItem(PKCE_STORAGE_KEY) || 'null');
  sessionStorage.removeItem(PKCE_STORAGE_KEY);
  history.replaceState(null, '', `${location.pathname}${saved?.returnRoute || '#/'}`);
  if (params.has('error')) {
    throw new Error(`The sign-in service said: ${params.get('error_description') ||
      params.get('error')}`);
  }
  if (!oauth || !saved || saved.state !== params.get('state')) {
    throw new Error('This sign-in answer does not match a sign-in started here; try again.');
  }
  let response;
  try {
    response = await fetch(oauth.token_url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({
        grant_type: 'authorization_code',
        client_id: oauth.client_id,
        code: params.get('code'),
        redirect_uri: redirectUri(),
        code_verifier: saved.verifier,
      }),
      credentials: 'omit',
      cache: 'no-store',
    });
  } catch {
    throw new Error('Could not reach the sign-in service to finish signing in.');
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok || typeof body.access_token !== 'string') {
    throw new Error(`The sign-in service refused the code: ${body.error_description ||
      body.error || response.status}`);
  }
  setToken(body.access_token);
  return { returnRoute: saved.returnRoute || '#/' };
}
