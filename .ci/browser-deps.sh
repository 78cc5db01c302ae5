#!/usr/bin/env bash
# Installs Debian's chromium for the real-browser UI test when it is missing. Never downloads Playwright's own browser.
# Failure is not fatal: the browser test then skips with a printed reason.
if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null; then
  echo "browser-deps: cannot apt-get install chromium (not root or no apt-get); the browser test will skip"; exit 0
fi
echo "browser-deps: installing Debian chromium for the browser UI test"
(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
  || echo "browser-deps: apt-get install chromium failed; the browser test will skip"
