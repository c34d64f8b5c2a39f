#!/usr/bin/env python3
"""Static checks of the console's assets; no browser, no server, no network.

- Every file under console/ (tests aside) is embedded by gateway/src/console.rs, and every
  embedded file exists.
- No HTML file holds an inline script, an inline style, a `style=` attribute, an `on…=`
  handler or a `javascript:` URL (the CSP would block them; better not to write them).
- No JavaScript assigns HTML strings (innerHTML, outerHTML, insertAdjacentHTML,
  document.write) or evaluates strings (eval, new Function), which Trusted Types forbids.
- No asset loads anything from another origin (no CDN, no web font).
- No JavaScript keeps anything in localStorage, or the token anywhere but memory.
- Every JavaScript module parses (with `node --check` when node is installed).
"""

import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(ROOT)
RUST = os.path.join(REPO, "gateway", "src", "console.rs")

failures = []


def fail(message):
    failures.append(message)


def assets():
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d != "tests"]
        for name in filenames:
            yield os.path.relpath(os.path.join(dirpath, name), ROOT)


def main():
    files = sorted(assets())
    rust = open(RUST, encoding="utf-8").read()
    embedded = set(re.findall(r'include_bytes!\("\.\./\.\./console/([^"]+)"\)', rust))
    for path in files:
        if path not in embedded:
            fail(f"{path} is not embedded by gateway/src/console.rs")
    for path in embedded:
        if not os.path.isfile(os.path.join(ROOT, path)):
            fail(f"gateway/src/console.rs embeds {path}, which does not exist")

    for path in files:
        text = open(os.path.join(ROOT, path), encoding="utf-8").read()
        if path.endswith(".html"):
            for match in re.finditer(r"<script\b([^>]*)>(.*?)</script>", text, re.S | re.I):
                if "src=" not in match.group(1) or match.group(2).strip():
                    fail(f"{path}: inline script")
            if re.search(r"<style\b", text, re.I):
                fail(f"{path}: inline <style>")
            if re.search(r"\sstyle\s*=", text, re.I):
                fail(f"{path}: style attribute")
            if re.search(r"\son[a-z]+\s*=", text, re.I):
                fail(f"{path}: inline event handler")
            if re.search(r"javascript:", text, re.I):
                fail(f"{path}: javascript: URL")
        if re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text) or "@import url(http" in text:
            fail(f"{path}: loads something from another origin")
        if path.endswith(".js"):
            # Comments may name what the code must not do; only code is checked.
            text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
            text = re.sub(r"(^|\s)//.*", "", text)
            for pattern in (r"\.innerHTML\b", r"\.outerHTML\b", r"insertAdjacentHTML",
                            r"document\.write", r"\beval\s*\(", r"new Function\s*\(",
                            r"\.style\.cssText", r"setAttribute\(\s*['\"]style"):
                if re.search(pattern, text):
                    fail(f"{path}: uses {pattern}")
            if "localStorage" in text:
                fail(f"{path}: uses localStorage")
            if re.search(r"sessionStorage\.setItem\([^)]*[Tt]oken", text):
                fail(f"{path}: puts a token in sessionStorage")

    node = shutil.which("node")
    if node:
        for path in files:
            if path.endswith(".js"):
                result = subprocess.run([node, "--check", os.path.join(ROOT, path)],
                                        capture_output=True, text=True, timeout=30)
                if result.returncode != 0:
                    fail(f"{path}: does not parse:\n{result.stderr}")
    else:
        print("console static check: node not installed; the browser test parses the modules")

    if failures:
        for message in failures:
            print(f"console static check: {message}", file=sys.stderr)
        sys.exit(1)
    print(f"console static check: {len(files)} assets ok")


if __name__ == "__main__":
    main()
