// The console's entry point: learns the server's auth mode, finishes an OAuth sign-in when
// the issuer has just sent the user back, and routes on the address's hash:
//   #/                             find or open an account
//   #/signin                       sign in (only with --auth jwt)
//   #/accounts/{id}                an account: balances, forms, movements
//   #/accounts/{id}/report?from=&to=   the daily consolidated report

import { hasToken, onTokenChange, onUnauthorized, setToken, tokenClaims } from './api.js';
import { completeOAuthSignIn, detectAuthMode, loadConfig } from './auth.js';
import { h, replace } from './dom.js';
import { plainWords } from './forms.js';
import * as accountView from './views/account.js';
import * as homeView from './views/home.js';
import * as reportView from './views/report.js';
import * as signinView from './views/signin.js';

const main = document.getElementById('main');
const banner = document.getElementById('banner');
const session = document.getElementById('session');

const ctx = {
  /** 'jwt' or 'none', learned from the API at start. */
  authMode: null,
  /** The server's console configuration (OAuth issuer or null). */
  config: { oauth: null },
  /** A message for the sign-in page (e.g. why the user was signed out). */
  notice: null,
  /** Where to go after signing in. */
  returnRoute: '#/',
  /** A message for the next page only (see flash/takeFlash). */
  flashMessage: null,
  /** Shows `route`, rendering again when it is already the current one. */
  navigate(route) {
    if (location.hash === route) renderRoute(); else location.hash = route;
  },
  /** Keeps `message` for the next page (e.g. "Account opened"). */
  flash(message) {
    ctx.flashMessage = message;
  },
  /** Returns the pending flash message as a status element, once. */
  takeFlash() {
    const message = ctx.flashMessage;
    ctx.flashMessage = null;
    return message ? h('p', { class: 'flash', role: 'status' }, message) : null;
  },
  /** Leaves the sign-in page for the page the user wanted. */
  afterSignIn() {
    ctx.notice = null;
    const target = ctx.returnRoute && ctx.returnRoute !== '#/signin' ? ctx.returnRoute : '#/';
    ctx.navigate(target);
  },
};

function renderSession() {
  if (ctx.authMode === 'none') {
    replace(session, h('span', { class: 'badge warn' }, 'No sign-in (auth none)'));
    return;
  }
  if (!hasToken()) {
    replace(session, h('span', { class: 'badge' }, 'Signed out'));
    return;
  }
  const claims = tokenClaims() || {};
  const who = claims.username || claims.email || claims.sub || 'token';
  const expires = typeof claims.exp === 'number'
    ? ` · until ${new Date(claims.exp * 1000).toISOString().slice(11, 16)} UTC` : '';
  const signOut = h('button', { type: 'button', class: 'link' }, 'Sign out');
  signOut.addEventListener('click', () => {
    setToken(null);
    ctx.returnRoute = '#/';
    ctx.navigate('#/signin');
  });
  replace(session, h('span', { class: 'who', title: 'Claims shown for information; the server ' +
    'checks the token.' }, `Signed in as ${who}${expires}`), ' ', signOut);
}

function renderBanner() {
  if (ctx.authMode === 'none') {
    replace(banner, h('p', { class: 'banner-none', 'data-banner': 'auth-none' },
      h('strong', null, 'Nothing is protected. '),
      'This server runs with ', h('code', null, '--auth none'), ': anyone who can reach it ' +
      'can read and move money. Use ', h('code', null, '--auth jwt'),
      ' outside a development machine.'));
  } else {
    banner.replaceChildren();
  }
}

/** Returns [view, ...args] for the current hash. */
function parseRoute() {
  const hash = location.hash || '#/';
  const [path, queryString = ''] = hash.slice(1).split('?');
  const query = new URLSearchParams(queryString);
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  if (parts[0] === 'signin') return ['signin'];
  if (parts[0] === 'accounts' && parts[1] && parts.length === 2) return ['account', parts[1]];
  if (parts[0] === 'accounts' && parts[1] && parts[2] === 'report') {
    return ['report', parts[1], query];
  }
  return ['home'];
}

let renderSeq = 0;
async function renderRoute() {
  renderSeq += 1;
  const seq = renderSeq;
  const [view, ...args] = parseRoute();
  if (ctx.authMode === 'jwt' && !hasToken() && view !== 'signin') {
    ctx.returnRoute = location.hash || '#/';
    location.replace('#/signin');
    return;
  }
  if (view === 'signin' && (ctx.authMode === 'none' || hasToken())) {
    location.replace('#/');
    return;
  }
  document.title = {
    signin: 'Sign in', home: 'Accounts', account: `Account ${args[0]}`,
    report: `Report ${args[0]}`,
  }[view] + ' · saldo console';
  const modules = { signin: signinView, home: homeView, account: accountView, report: reportView };
  await modules[view].render(main, ctx, ...args);
  if (seq === renderSeq) {
    const heading = main.querySelector('h1');
    if (heading && !main.contains(document.activeElement)) heading.focus();
  }
}

onTokenChange(() => renderSession());

onUnauthorized(() => {
  // The API refused the token (expired or revoked): forget it and ask to sign in again.
  setToken(null);
  ctx.notice = 'Your session ended (the token expired or was refused). Sign in again.';
  ctx.returnRoute = location.hash || '#/';
  ctx.navigate('#/signin');
});

async function start() {
  ctx.config = await loadConfig();
  try {
    const done = await completeOAuthSignIn(ctx.config.oauth);
    if (done) ctx.returnRoute = done.returnRoute;
  } catch (error) {
    ctx.notice = plainWords(error);
  }
  try {
    ctx.authMode = await detectAuthMode();
  } catch (error) {
    replace(main, h('h1', { tabindex: '-1' }, 'saldo is not reachable'),
      h('p', { class: 'form-status error', role: 'alert' }, plainWords(error)),
      h('p', null, 'Reload the page to try again.'));
    return;
  }
  document.documentElement.dataset.authMode = ctx.authMode;
  renderBanner();
  renderSession();
  window.addEventListener('hashchange', () => {
    if (location.hash.startsWith('#/') || location.hash === '') renderRoute();
  });
  if (hasToken() && ctx.returnRoute !== '#/' && location.hash !== ctx.returnRoute) {
    location.replace(ctx.returnRoute);
  }
  await renderRoute();
}

start();
