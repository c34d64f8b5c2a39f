// Sign-in page (only with `--auth jwt`): paste a bearer token, or sign in with the OAuth
// issuer when the server names one. The token is checked by calling the API with it.

import { setToken } from '../api.js';
import { beginOAuthSignIn, tokenRefusal } from '../auth.js';
import { h, replace } from '../dom.js';
import { controller, field, plainWords, statusLine } from '../forms.js';

/** Renders the sign-in page into `main`; `ctx.config.oauth` enables single sign-on and
 * `ctx.afterSignIn()` is called once a token is accepted. */
export function render(main, ctx) {
  const token = field({
    label: 'Bearer token',
    name: 'token',
    control: 'textarea',
    hint: 'Paste an access token (a JWT) issued for this ledger. It is kept in this tab\'s ' +
      'memory only, and forgotten when the tab is closed or reloaded.',
    attrs: { rows: 5, required: true, autocomplete: 'off', spellcheck: 'false',
      autocapitalize: 'off' },
  });
  const button = h('button', { type: 'submit' }, 'Sign in with token');
  const status = statusLine();
  const form = h('form', { class: 'card', 'aria-labelledby': 'signin-token-title',
    novalidate: true, 'data-form': 'signin' },
  h('h2', { id: 'signin-token-title' }, 'Use a bearer token'),
  token.row, h('div', { class: 'actions' }, button), status);
  const ctl = controller(form, { token }, { status, button,
    failureSummary: 'Not signed in: see the message next to the field.' });
  ctl.onSubmit(async () => {
    const value = token.input.value.trim().replace(/^Bearer\s+/i, '');
    if (!value) {
      throw Object.assign(new Error(), { code: 'invalid_request', field: 'token',
        plain: 'Paste a token first.' });
    }
    setToken(value);
    let refusal;
    try {
      refusal = await tokenRefusal();
    } catch (error) {
      setToken(null);
      throw error;
    }
    if (refusal !== null) {
      setToken(null);
      throw Object.assign(new Error(), { code: 'unauthenticated', field: 'token',
        plain: 'The API refused this token: it is expired, not yet valid, or not issued for ' +
          'this ledger.', detail: refusal });
    }
    token.input.value = '';
    ctx.afterSignIn();
    return 'Signed in.';
  });

  const sso = ctx.config.oauth ? ssoCard(ctx) : null;
  replace(main,
    h('h1', { tabindex: '-1' }, 'Sign in'),
    ctx.notice ? h('p', { class: 'notice', role: 'alert' }, ctx.notice) : null,
    h('p', null, 'This ledger requires a signed-in user (', h('code', null, '--auth jwt'), ').'),
    h('div', { class: 'grid' }, sso, form),
  );
  if (!sso) token.input.focus();
}

function ssoCard(ctx) {
  const status = statusLine();
  const button = h('button', { type: 'button', class: 'primary' }, 'Sign in with single sign-on');
  button.addEventListener('click', async () => {
    button.disabled = true;
    try {
      await beginOAuthSignIn(ctx.config.oauth, ctx.returnRoute || '#/');
    } catch (error) {
      status.textContent = plainWords(error);
      status.className = 'form-status error';
      button.disabled = false;
    }
  });
  return h('section', { class: 'card', 'aria-labelledby': 'signin-sso-title' },
    h('h2', { id: 'signin-sso-title' }, 'Single sign-on'),
    h('p', null, 'Sign in with your organisation\'s account (OAuth 2.0 with PKCE).'),
    h('div', { class: 'actions' }, button), status);
}
