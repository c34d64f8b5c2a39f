#!/usr/bin/env python3
"""End-to-end test of the saldo console in a real browser (issue 7).

Starts `saldo serve` twice on 127.0.0.1 (a free port each, a fresh temporary data dir each):
once with `--auth jwt` and an HS256 development secret, once with `--auth none`. Drives Debian's
Chromium through its WebDriver (selenium) and checks, against the API itself:

- the console routes' security headers, content types and the /console -> /console/ redirect;
- sign-in with a real signed token (and a refused token explained next to the field), the
  token kept out of localStorage, sessionStorage and cookies;
- opening an account, posting a credit and a debit, making a transfer;
- a double submit (double click, repeated submit) posting once, and a retry whose first attempt
  reached the server (same request ID) posting once, checked through the API;
- a rejected debit showing its reason next to the amount; API errors next to their fields;
- movements newest first with the running balance, paginated with the cursor;
- the daily report table equal to the API's figures, the chart drawn, the CSV download equal
  to the API's figures;
- the `--auth none` banner; no script error and no CSP violation in the browser's log; no
  horizontal scrolling at 360 px.

A screenshot of each page (1280 px and 360 px wide) is saved under target/console-screenshots/.
Every wait is bounded; only the processes this script starts are stopped, by PID.

Usage: console/tests/e2e.py [--saldo-bin PATH] [--screenshots DIR]
"""

import argparse
import base64
import csv
import datetime
import hashlib
import http.server
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
import uuid

import jwt
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

# Longest wait for any one thing to appear in the page.
WAIT_S = 15
# Longest wait for `saldo serve` to answer /healthz after start.
SERVER_START_S = 60
# Longest wait for `saldo serve` to exit after SIGTERM before it is killed.
SERVER_STOP_S = 15
# The HS256 development secret the jwt server is started with; the test signs tokens with it.
HS256_SECRET = "console-e2e-development-secret-not-for-production"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
]
# The `saldo serve` flags that configure the console's OAuth issuer; the single sign-on test
# runs once they exist.
CONSOLE_OAUTH_FLAGS = ("--console-oauth-authorize-url", "--console-oauth-token-url",
                       "--console-oauth-client-id", "--console-oauth-scope")
WIDE_PX = 1280
NARROW_PX = 360


def log(message):
    print(f"[console-e2e] {message}", flush=True)


def free_port():
    """Returns a TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Saldo:
    """One `saldo serve` process this script started, on a free port with a temp data dir."""

    def __init__(self, binary, auth, workdir, extra_args=()):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.data_dir = tempfile.mkdtemp(prefix=f"saldo-console-{auth}-", dir=workdir)
        args = [binary, "serve", "--listen", f"127.0.0.1:{self.port}",
                "--data-dir", self.data_dir, "--auth", auth]
        if auth == "jwt":
            args += ["--jwt-hs256-secret", HS256_SECRET]
        args += list(extra_args)
        self.log_path = os.path.join(workdir, f"saldo-{auth}-{self.port}.log")
        self.log_file = open(self.log_path, "wb")
        log(f"starting {' '.join(args)}")
        self.process = subprocess.Popen(args, stdout=self.log_file, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"saldo serve exited with {self.process.returncode}; "
                                   f"log:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.base}/healthz", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"saldo serve not healthy after {SERVER_START_S}s; "
                                   f"log:\n{self.tail()}")
            time.sleep(0.2)
        log(f"saldo serve (auth {auth}) is up on {self.base}, pid {self.process.pid}")

    def tail(self):
        self.log_file.flush()
        with open(self.log_path, "rb") as f:
            return f.read()[-4000:].decode(errors="replace")

    def stop(self):
        """Stops the process this object started (SIGTERM, then SIGKILL), by its PID."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=SERVER_STOP_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=SERVER_STOP_S)
        self.log_file.close()


def make_token(subject="merchant-e2e", scope="ledger:read ledger:write", ttl_s=3600):
    """Returns an HS256 JWT signed with the server's development secret."""
    now = int(time.time())
    claims = {"sub": subject, "scope": scope, "iat": now, "nbf": now - 5, "exp": now + ttl_s}
    return jwt.encode(claims, HS256_SECRET, algorithm="HS256")


class Api:
    """A tiny client of the public API, used to check what the console did."""

    def __init__(self, base, token):
        self.base = base
        self.token = token

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.base}{path}", data=data, method=method)
        if body is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def ok(self, method, path, body=None):
        status, data = self.call(method, path, body)
        assert 200 <= status < 300, f"{method} {path} -> {status} {data}"
        return data

    def all_movements(self, account_id):
        rows, cursor = [], None
        for _ in range(100):  # bound: 100 pages
            path = f"/v1/accounts/{account_id}/movements?limit=100"
            if cursor:
                path += f"&cursor={urllib.request.quote(cursor)}"
            page = self.ok("GET", path)
            rows += page["movements"]
            cursor = page.get("next_cursor")
            if not cursor:
                return rows
        raise AssertionError("more than 100 pages of movements")


class Browser:
    """Chromium through chromedriver, with a fresh profile; screenshots on demand."""

    def __init__(self, workdir, shots_dir):
        self.shots_dir = shots_dir
        self.download_dir = tempfile.mkdtemp(prefix="downloads-", dir=workdir)
        options = webdriver.ChromeOptions()
        options.binary_location = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='profile-', dir=workdir)}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        options.add_experimental_option("prefs", {
            "download.default_directory": self.download_dir,
            "download.prompt_for_download": False,
        })
        driver_path = os.environ.get("CHROMEDRIVER_BIN", "/usr/bin/chromedriver")
        self.service = Service(executable_path=driver_path)
        self.driver = webdriver.Chrome(service=self.service, options=options)
        self.driver.set_page_load_timeout(WAIT_S * 2)
        self.driver.set_script_timeout(WAIT_S)
        self.driver.execute_cdp_cmd("Browser.setDownloadBehavior", {
            "behavior": "allow", "downloadPath": self.download_dir})
        # A re-render replaces nodes under the test's feet; such a node just means "not yet".
        self.wait = WebDriverWait(self.driver, WAIT_S,
                                  ignored_exceptions=[StaleElementReferenceException])
        self.console_errors = []

    def quit(self):
        pid = self.service.process.pid if self.service.process else None
        try:
            self.driver.quit()
        finally:
            if pid and self.service.process.poll() is None:
                self.service.process.kill()

    def until(self, condition, message):
        try:
            return self.wait.until(lambda _: condition())
        except TimeoutException:
            raise AssertionError(f"timed out after {WAIT_S}s waiting for: {message}") from None

    def find(self, css):
        return self.until(lambda: self.present(css), f"element {css}")

    def present(self, css):
        try:
            found = self.driver.find_elements(By.CSS_SELECTOR, css)
            return found[0] if found and found[0].is_displayed() else None
        except StaleElementReferenceException:
            return None

    def text(self, css):
        return self.find(css).text

    def heading(self, text):
        self.until(lambda: text in (self.present("main h1") or FakeText()).text,
                   f"heading containing {text!r}")

    def js(self, script, *args):
        return self.driver.execute_script(script, *args)

    def collect_log(self):
        """Moves the browser log's errors into `console_errors`; network statuses (the auth
        probe's 401, a 404 or 422 the test provoked) are expected and left out."""
        for entry in self.driver.get_log("browser"):
            message = entry.get("message", "")
            if entry.get("level") != "SEVERE":
                continue
            if "Failed to load resource" in message:
                continue
            self.console_errors.append(message)

    def shot(self, name):
        """Saves full-page screenshots of the current page at 1280 px and 360 px wide, and
        checks that at 360 px nothing scrolls sideways."""
        os.makedirs(self.shots_dir, exist_ok=True)
        self.check_accessible_names(name)
        for width in (WIDE_PX, NARROW_PX):
            self.metrics(width, 900)
            time.sleep(0.4)
            height = self.js("return Math.ceil(document.documentElement.scrollHeight)")
            self.metrics(width, max(600, min(height, 6000)))
            time.sleep(0.3)
            if width == NARROW_PX:
                overflow = self.js(
                    "return document.documentElement.scrollWidth - window.innerWidth")
                assert overflow <= 0, f"{name}: page scrolls sideways by {overflow}px at 360px"
            path = os.path.join(self.shots_dir, f"{name}-{width}.png")
            self.driver.save_screenshot(path)
        self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        self.metrics(WIDE_PX, 900)
        log(f"screenshots {name}-{WIDE_PX}.png, {name}-{NARROW_PX}.png")

    def check_accessible_names(self, name):
        """Checks that every form control has a label and every button a name."""
        unnamed = self.js(
            "const controls = [...document.querySelectorAll('input, select, textarea')]"
            "  .filter((e) => e.type !== 'hidden' && e.labels.length === 0"
            "    && !e.getAttribute('aria-label')).map((e) => e.outerHTML);"
            "const buttons = [...document.querySelectorAll('button, a')]"
            "  .filter((e) => !e.textContent.trim() && !e.getAttribute('aria-label'))"
            "  .map((e) => e.outerHTML);"
            "return controls.concat(buttons);")
        assert not unnamed, f"{name}: controls without an accessible name: {unnamed}"

    def metrics(self, width, height):
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1,
            "mobile": width <= NARROW_PX})


class FakeText:
    text = ""


def fill(browser, form, name, value):
    """Types `value` into the field `name` of the form `data-form=form`, as a user would."""
    field = browser.find(f"form[data-form='{form}'] [name='{name}']")
    field.clear()
    field.send_keys(value)
    return field


def form_status(browser, form):
    return browser.find(f"form[data-form='{form}'] .form-status")


def wait_status(browser, form, kind, message):
    css = f"form[data-form='{form}'] .form-status.{kind}"
    browser.until(lambda: browser.present(css), f"{message} ({form} status {kind})")
    return browser.present(css).text


def field_error(browser, form, name):
    css = f"form[data-form='{form}'] [data-error-for='{name}']"
    browser.until(lambda: browser.present(css), f"an error next to {form}.{name}")
    return browser.present(css).text


def request_id(browser, form):
    return browser.find(f"form[data-form='{form}'] output[data-request-id]").text.strip()


def stat(browser, key):
    return browser.find(f".summary dd[data-field='{key}']").get_attribute("data-value")


def wait_balance(browser, expected):
    browser.until(lambda: stat(browser, "balance") == expected, f"balance {expected}")


def check_headers(base):
    """Checks the console routes' headers and the redirect on the real binary."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        opener.open(f"{base}/console", timeout=5)
        raise AssertionError("/console did not redirect")
    except urllib.error.HTTPError as error:
        assert error.code in (301, 302, 307, 308), error.code
        assert error.headers["Location"] in ("/console/", f"{base}/console/")
    expected_types = {
        "/console/": "text/html",
        "/console/app.js": "text/javascript",
        "/console/style.css": "text/css",
        "/console/favicon.svg": "image/svg+xml",
    }
    for path, content_type in expected_types.items():
        with urllib.request.urlopen(f"{base}{path}", timeout=5) as response:
            headers = response.headers
            assert headers["Content-Type"].startswith(content_type), (path, headers["Content-Type"])
            csp = headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp and "style-src 'self'" in csp, csp
            assert "unsafe" not in csp and "frame-ancestors 'none'" in csp, csp
            assert headers["X-Frame-Options"] == "DENY"
            assert headers["X-Content-Type-Options"] == "nosniff"
            assert headers["Referrer-Policy"] == "no-referrer"
    log("console headers, content types and redirect: ok")


def sign_in(browser, base):
    browser.driver.get(f"{base}/console")
    browser.heading("Sign in")
    browser.until(lambda: browser.driver.current_url.startswith(f"{base}/console/"),
                  "redirect to /console/")
    browser.shot("01-signin")
    # A token signed with another secret is refused, and the refusal is shown at the field.
    bad = jwt.encode({"sub": "x", "exp": int(time.time()) + 600},
                     "a-different-secret-that-the-server-does-not-know", algorithm="HS256")
    fill(browser, "signin", "token", bad)
    browser.find("form[data-form='signin'] button[type='submit']").click()
    message = field_error(browser, "signin", "token")
    assert "refused" in message, message
    browser.shot("02-signin-refused")
    # A real signed token is accepted.
    fill(browser, "signin", "token", make_token())
    browser.find("form[data-form='signin'] button[type='submit']").click()
    browser.heading("Accounts")
    storage = browser.js("return [localStorage.length, sessionStorage.length, document.cookie]")
    assert storage == [0, 0, ""], f"the token must stay in memory only, found {storage}"
    assert "Signed in as merchant-e2e" in browser.text("#session")
    log("sign-in with a signed token: ok")


def open_account(browser, account_id):
    fill(browser, "open-account", "id", account_id)
    fill(browser, "open-account", "currency", "EUR")
    fill(browser, "open-account", "overdraft_limit", "")
    browser.find("form[data-form='open-account'] button[type='submit']").click()
    browser.heading(account_id)
    assert "opened" in browser.text(".flash")
    wait_balance(browser, "0.00")


def post_entry(browser, kind, amount, description=""):
    browser.find(f"form[data-form='entry'] input[value='{kind}']").click()
    fill(browser, "entry", "amount", amount)
    fill(browser, "entry", "description", description)
    rid = request_id(browser, "entry")
    browser.find("form[data-form='entry'] button[type='submit']").click()
    return rid


def test_jwt(browser, server, run_id):
    base = server.base
    api = Api(base, make_token())
    check_headers(base)
    sign_in(browser, base)
    browser.shot("03-home")

    merchant = f"merchant-{run_id}"
    supplier = f"supplier-{run_id}"
    api.ok("POST", "/v1/accounts", {"id": supplier, "currency": "EUR"})

    # Finding an account that does not exist says so next to the ID.
    fill(browser, "find", "id", f"nobody-{run_id}")
    browser.find("form[data-form='find'] button[type='submit']").click()
    assert "no account" in field_error(browser, "find", "id").lower()

    open_account(browser, merchant)
    assert api.ok("GET", f"/v1/accounts/{merchant}")["currency"] == "EUR"
    log("open an account: ok")

    # A credit, then a debit posted with the keyboard (Enter in the amount field).
    post_entry(browser, "credit", "1000.00", "opening float")
    assert "posted" in wait_status(browser, "entry", "ok", "credit posted")
    wait_balance(browser, "1000.00")
    browser.find("form[data-form='entry'] input[value='debit']").click()
    fill(browser, "entry", "amount", "250.50")
    fill(browser, "entry", "description", "card fees")
    fill(browser, "entry", "amount", "250.50").send_keys(Keys.ENTER)
    browser.until(lambda: stat(browser, "balance") == "749.50", "balance 749.50 after debit")
    assert api.ok("GET", f"/v1/accounts/{merchant}")["balance"] == "749.50"
    log("credit and debit: ok")

    # Double submit: a double click and a repeated programmatic submit post once each.
    browser.find("form[data-form='entry'] input[value='credit']").click()
    fill(browser, "entry", "amount", "10.00")
    fill(browser, "entry", "description", "double click")
    rid_double = request_id(browser, "entry")
    ActionChains(browser.driver).double_click(
        browser.find("form[data-form='entry'] button[type='submit']")).perform()
    wait_status(browser, "entry", "ok", "double-clicked credit answered")
    fill(browser, "entry", "amount", "11.00")
    fill(browser, "entry", "description", "submitted twice")
    rid_twice = request_id(browser, "entry")
    assert rid_twice != rid_double, "a new request ID is drawn after a definite answer"
    browser.js("const f = document.querySelector(\"form[data-form='entry']\");"
               "f.requestSubmit(); f.requestSubmit();")
    wait_status(browser, "entry", "ok", "twice-submitted credit answered")
    wait_balance(browser, "770.50")
    # A retry whose first attempt reached the server (its answer lost): the form still holds
    # that request ID, so the retry is answered with the original and posts nothing new.
    rid_retry = request_id(browser, "entry")
    status, _ = api.call("POST", f"/v1/accounts/{merchant}/entries",
                         {"id": rid_retry, "type": "credit", "amount": "5.00",
                          "description": "lost answer"})
    assert status == 201, status
    fill(browser, "entry", "amount", "5.00")
    fill(browser, "entry", "description", "lost answer")
    browser.find("form[data-form='entry'] button[type='submit']").click()
    message = wait_status(browser, "entry", "ok", "retried credit answered")
    assert "nothing was posted twice" in message, message
    moves = api.all_movements(merchant)
    for rid, amount in ((rid_double, "10.00"), (rid_twice, "11.00"), (rid_retry, "5.00")):
        same = [m for m in moves if m["id"] == rid]
        assert len(same) == 1 and same[0]["amount"] == amount, (rid, same)
    assert sum(1 for m in moves if m["amount"] in ("10.00", "11.00", "5.00")) == 3, moves
    wait_balance(browser, "775.50")
    assert api.ok("GET", f"/v1/accounts/{merchant}")["balance"] == "775.50"
    log("double submit and retry post once: ok")

    # A debit beyond the available balance is rejected, with its reason next to the amount.
    post_entry(browser, "debit", "100000.00", "too much")
    reason = field_error(browser, "entry", "amount")
    assert "Not enough funds" in reason, reason
    assert browser.find("form[data-form='entry'] [name='amount']").get_attribute(
        "aria-invalid") == "true"
    assert api.ok("GET", f"/v1/accounts/{merchant}")["balance"] == "775.50"
    browser.shot("04-account-rejected-debit")
    # An amount the API refuses (too many decimals) is explained at the amount too.
    post_entry(browser, "credit", "1.234")
    reason = field_error(browser, "entry", "amount")
    assert "not valid" in reason, reason
    log("rejected debit shows its reason: ok")

    # Transfers: a good one, one to the same account, one to an unknown account.
    fill(browser, "transfer", "to", supplier)
    fill(browser, "transfer", "amount", "75.50")
    fill(browser, "transfer", "description", "supplier invoice 12")
    browser.find("form[data-form='transfer'] button[type='submit']").click()
    assert "committed" in wait_status(browser, "transfer", "ok", "transfer committed")
    wait_balance(browser, "700.00")
    assert api.ok("GET", f"/v1/accounts/{supplier}")["balance"] == "75.50"
    fill(browser, "transfer", "to", merchant)
    fill(browser, "transfer", "amount", "1.00")
    browser.find("form[data-form='transfer'] button[type='submit']").click()
    assert "itself" in field_error(browser, "transfer", "to")
    fill(browser, "transfer", "to", f"ghost-{run_id}")
    browser.find("form[data-form='transfer'] button[type='submit']").click()
    browser.until(lambda: "no account" in field_error(browser, "transfer", "to").lower(),
                  "unknown destination explained")
    log("transfer and its errors: ok")

    # Movements newest first with the running balance, then pagination with the cursor.
    for i in range(25):
        api.ok("POST", f"/v1/accounts/{merchant}/entries",
               {"id": f"bulk-{run_id}-{i}", "type": "credit", "amount": "1.00"})
    browser.find("button[data-action='refresh']").click()
    wait_balance(browser, "725.00")
    moves = api.all_movements(merchant)
    rows = browser.driver.find_elements(By.CSS_SELECTOR, "table.movements tbody tr")
    browser.until(lambda: len(browser.driver.find_elements(
        By.CSS_SELECTOR, "table.movements tbody tr")) == 20, "first page of 20 movements")
    more = browser.find("button[data-action='older']")
    assert "older" in more.text
    browser.shot("05-account")
    more.click()
    browser.until(lambda: len(browser.driver.find_elements(
        By.CSS_SELECTOR, "table.movements tbody tr")) == len(moves), "every movement listed")
    rows = browser.driver.find_elements(By.CSS_SELECTOR, "table.movements tbody tr")
    shown = [(r.get_attribute("data-movement-id"), r.get_attribute("data-balance"))
             for r in rows]
    assert shown == [(m["id"], m["balance_after"]) for m in moves], "movements as the API has them"
    assert shown[0][1] == "725.00", "the newest movement's running balance is the balance"
    log(f"movements newest first, paginated ({len(moves)} rows): ok")

    test_report(browser, api, merchant)
    test_read_only_token(browser, api, merchant)


def test_read_only_token(browser, api, merchant):
    """Signs out, signs in with a token holding only ledger:read: the account reads, and a
    posting is refused with the reason in plain words; nothing moves."""
    browser.find("#session button").click()
    browser.heading("Sign in")
    assert browser.js("return document.querySelector('#session').textContent").strip() == \
        "Signed out"
    fill(browser, "signin", "token", make_token(subject="auditor", scope="ledger:read"))
    browser.find("form[data-form='signin'] button[type='submit']").click()
    browser.heading("Accounts")
    fill(browser, "find", "id", merchant)
    browser.find("form[data-form='find'] button[type='submit']").click()
    browser.heading(merchant)
    wait_balance(browser, "725.00")
    post_entry(browser, "credit", "1.00", "not allowed")
    message = wait_status(browser, "entry", "error", "the refused posting")
    assert "does not allow" in message, message
    assert api.ok("GET", f"/v1/accounts/{merchant}")["balance"] == "725.00"
    browser.shot("08-read-only-token")
    log("read-only token: reads, and a posting is refused in plain words: ok")

    # The token expires mid-session (swapped for an expired one in the console's own module):
    # the next API call is refused, the console asks to sign in again and then comes back.
    expired = make_token(subject="auditor", scope="ledger:read", ttl_s=-3600)
    browser.driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "import('./api.js').then((m) => { m.setToken(arguments[0]); done(true); });", expired)
    browser.find("button[data-action='refresh']").click()
    browser.heading("Sign in")
    notice = browser.find("main .notice").text
    assert "session ended" in notice, notice
    fill(browser, "signin", "token", make_token())
    browser.find("form[data-form='signin'] button[type='submit']").click()
    browser.heading(merchant)
    wait_balance(browser, "725.00")
    log("an expired token sends the user to sign in, and back to the page: ok")


def test_report(browser, api, merchant):
    browser.find("a[href$='/report']").click()
    browser.heading("Daily report")
    table = browser.find("table.report")
    today = datetime.datetime.now(datetime.timezone.utc).date()
    frm = browser.find("form[data-form='report'] [name='from']").get_attribute("value")
    to = browser.find("form[data-form='report'] [name='to']").get_attribute("value")
    assert to == today.isoformat(), (to, today)
    report = api.ok("GET", f"/v1/accounts/{merchant}/daily?from={frm}&to={to}")
    compare_report(browser, report)
    # A one-week range chosen in the form.
    week_from = (today - datetime.timedelta(days=6)).isoformat()
    browser.js("arguments[0].value = arguments[1]",
               browser.find("form[data-form='report'] [name='from']"), week_from)
    report = api.ok("GET", f"/v1/accounts/{merchant}/daily?from={week_from}&to={to}")
    browser.find("form[data-form='report'] button[type='submit']").click()
    browser.until(lambda: browser.present(
        f"table.report caption") and week_from in browser.present("table.report caption").text,
        "the week's report")
    compare_report(browser, report)
    num_days = len(report["days"])
    assert num_days >= 1
    today_row = report["days"][-1]
    assert today_row["date"] == to and today_row["closing_balance"] == "725.00", today_row
    # The chart: a bar pair per day and the closing-balance line through every day.
    chart = browser.find("svg.chart")
    assert chart.get_attribute("role") == "img"
    assert int(chart.get_attribute("data-days")) == num_days
    for part in ("bar-credit", "bar-debit", "dot-closing"):
        assert len(browser.driver.find_elements(
            By.CSS_SELECTOR, f"svg.chart .{part}")) == num_days, part
    points = browser.find("svg.chart polyline.line-closing").get_attribute("points")
    assert points.count(",") == num_days, points
    # A range the API refuses is explained next to the field the API names.
    browser.js("arguments[0].value = arguments[1]",
               browser.find("form[data-form='report'] [name='to']"), "2020-01-01")
    browser.find("form[data-form='report'] button[type='submit']").click()
    reason = field_error(browser, "report", "to")
    assert "before" in reason, reason
    browser.shot("06-report-bad-range")
    browser.js("arguments[0].value = arguments[1]",
               browser.find("form[data-form='report'] [name='to']"), to)
    browser.find("form[data-form='report'] button[type='submit']").click()
    wait_status(browser, "report", "ok", "the week's report again")
    compare_report(browser, report)
    # The CSV download holds the API's figures.
    browser.find("button[data-action='csv']").click()
    path = browser.until(lambda: next((os.path.join(browser.download_dir, f)
                                       for f in os.listdir(browser.download_dir)
                                       if f.endswith(".csv")), None), "the CSV download")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(io.StringIO(f.read())))
    assert len(rows) == num_days
    for row, day in zip(rows, report["days"]):
        assert row == {k: str(v) for k, v in day.items()}, (row, day)
    browser.shot("06-report")
    log("report table, chart and CSV match the API: ok")


def compare_report(browser, report):
    browser.until(lambda: len(browser.driver.find_elements(
        By.CSS_SELECTOR, "table.report tbody tr")) == len(report["days"]),
        f"{len(report['days'])} report rows")
    rows = browser.driver.find_elements(By.CSS_SELECTOR, "table.report tbody tr")
    for row, day in zip(rows, report["days"]):
        assert row.get_attribute("data-date") == day["date"]
        for key in ("opening_balance", "credits", "debits", "movements", "closing_balance"):
            cell = row.find_element(By.CSS_SELECTOR, f"td[data-key='{key}']")
            assert cell.get_attribute("data-value") == str(day[key]), (day["date"], key)
            shown = cell.text.replace(",", "").replace("\u2212", "-")
            assert shown == str(day[key]), (day["date"], key, cell.text, day[key])


def test_auth_none(browser, server, run_id):
    base = server.base
    browser.driver.get(f"{base}/console/")
    banner = browser.find("[data-banner='auth-none']")
    assert "Nothing is protected" in banner.text, banner.text
    browser.heading("Accounts")
    open_account(browser, f"open-{run_id}")
    browser.shot("07-auth-none")
    log("--auth none banner: ok")


class FakeIssuer:
    """A Cognito-like OAuth2 issuer on 127.0.0.1 for the single sign-on test: /oauth2/authorize
    answers at once with a code (no login page), /oauth2/token checks the PKCE verifier against
    the challenge and returns an access token signed with the server's HS256 secret."""

    CLIENT_ID = "saldo-console-e2e"

    def __init__(self):
        self.codes = {}
        self.exchanges = []
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                ok = (url.path == "/oauth2/authorize" and query.get("response_type") == "code"
                      and query.get("client_id") == issuer.CLIENT_ID
                      and query.get("code_challenge_method") == "S256"
                      and query.get("code_challenge") and query.get("state")
                      and query.get("redirect_uri", "").endswith("/console/"))
                if not ok:
                    self.send_response(400)
                    self.end_headers()
                    return
                code = uuid.uuid4().hex
                issuer.codes[code] = (query["code_challenge"], query["redirect_uri"])
                location = query["redirect_uri"] + "?" + urllib.parse.urlencode(
                    {"code": code, "state": query["state"]})
                self.send_response(302)
                self.send_header("Location", location)
                self.end_headers()

            def do_POST(self):
                length = int(self.headers.get("Content-Length", "0"))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                challenge, redirect_uri = issuer.codes.pop(form.get("code"), (None, None))
                verifier = form.get("code_verifier", "")
                digest = hashlib.sha256(verifier.encode()).digest()
                computed = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
                ok = (self.path == "/oauth2/token" and challenge is not None
                      and form.get("grant_type") == "authorization_code"
                      and form.get("client_id") == issuer.CLIENT_ID
                      and form.get("redirect_uri") == redirect_uri and computed == challenge)
                issuer.exchanges.append(ok)
                body = json.dumps({"access_token": make_token(subject="sso-user"),
                                   "token_type": "Bearer", "expires_in": 3600} if ok
                                  else {"error": "invalid_grant"}).encode()
                self.send_response(200 if ok else 400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Access-Control-Allow-Origin",
                                 self.headers.get("Origin", "*"))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def serve_has_console_oauth_flags(binary):
    """Returns True when `saldo serve` can be told about an OAuth issuer for the console."""
    result = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True,
                            timeout=30)
    return all(flag in result.stdout for flag in CONSOLE_OAUTH_FLAGS)


def test_single_sign_on(browser, binary, workdir, servers):
    """Signs in through the OAuth2 authorization-code flow with PKCE against a fake issuer."""
    if not serve_has_console_oauth_flags(binary):
        log("SKIPPED single sign-on: `saldo serve` has no " + ", ".join(CONSOLE_OAUTH_FLAGS) +
            " flags yet (console::router_with is ready; docs/console.md)")
        return
    issuer = FakeIssuer()
    try:
        server = Saldo(binary, "jwt", workdir, extra_args=[
            "--console-oauth-authorize-url", f"{issuer.base}/oauth2/authorize",
            "--console-oauth-token-url", f"{issuer.base}/oauth2/token",
            "--console-oauth-client-id", FakeIssuer.CLIENT_ID,
            "--console-oauth-scope", "openid ledger:read ledger:write"])
        servers.append(server)
        browser.driver.get(f"{server.base}/console/#/")
        browser.heading("Sign in")
        browser.shot("09-signin-sso")
        browser.find("#signin-sso-title")
        browser.find("main section button.primary").click()
        browser.heading("Accounts")
        assert issuer.exchanges == [True], issuer.exchanges
        assert "Signed in as sso-user" in browser.text("#session")
        url = browser.driver.current_url
        assert "code=" not in url and "state=" not in url, url
        storage = browser.js(
            "return [localStorage.length, sessionStorage.length, document.cookie]")
        assert storage == [0, 0, ""], f"nothing may stay in storage, found {storage}"
        log("single sign-on (authorization code + PKCE): ok")
    finally:
        issuer.stop()


def test_pkce_vector(browser):
    """Checks the console's S256 code challenge against RFC 7636 appendix B."""
    challenge = browser.driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "import('./auth.js').then((m) => m.codeChallenge("
        "'dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk')).then(done, (e) => done(String(e)));")
    assert challenge == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", challenge
    log("PKCE S256 challenge (RFC 7636 vector): ok")


def stop_on_sigterm(signum, frame):
    """Turns SIGTERM (the runner's timeout) into SystemExit, so that `finally` stops the
    processes this script started."""
    raise SystemExit(f"console e2e: stopped by signal {signum}")


def main():
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saldo-bin", default=os.environ.get("SALDO_BIN", "target/debug/saldo"))
    parser.add_argument("--screenshots", default="target/console-screenshots")
    args = parser.parse_args()
    binary = os.path.abspath(args.saldo_bin)
    if not os.access(binary, os.X_OK):
        sys.exit(f"console e2e: saldo binary not found at {binary}; build it with "
                 f"`cargo build -p saldo-gateway` or set SALDO_BIN")
    shots = os.path.abspath(args.screenshots)
    shutil.rmtree(shots, ignore_errors=True)
    workdir = tempfile.mkdtemp(prefix="saldo-console-e2e-")
    run_id = uuid.uuid4().hex[:8]
    servers, browser, failed = [], None, False
    try:
        jwt_server = Saldo(binary, "jwt", workdir)
        servers.append(jwt_server)
        browser = Browser(workdir, shots)
        test_jwt(browser, jwt_server, run_id)
        test_pkce_vector(browser)
        browser.collect_log()
        none_server = Saldo(binary, "none", workdir)
        servers.append(none_server)
        test_auth_none(browser, none_server, run_id)
        browser.collect_log()
        test_single_sign_on(browser, binary, workdir, servers)
        browser.collect_log()
        assert not browser.console_errors, "browser log errors:\n" + "\n".join(
            browser.console_errors)
        log("no script error or CSP violation in the browser log: ok")
    except Exception:
        failed = True
        traceback.print_exc()
        if browser:
            try:
                browser.driver.save_screenshot(os.path.join(shots, "failure.png"))
                log(f"failure screenshot: {shots}/failure.png; url {browser.driver.current_url}")
                browser.collect_log()
                for line in browser.console_errors:
                    log(f"browser: {line}")
            except Exception:  # noqa: BLE001 - best effort while reporting a failure
                pass
        for server in servers:
            log(f"saldo log ({server.base}):\n{server.tail()}")
    finally:
        if browser:
            browser.quit()
        for server in servers:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if failed:
        sys.exit(1)
    log(f"all checks passed; screenshots in {shots}")


if __name__ == "__main__":
    main()
