#!/usr/bin/env bash
# Installs the browser the web console's tests drive: Debian's chromium and chromium-driver.
#
# Playwright for Python drives this system Chromium (executable_path=/usr/bin/chromium); it
# never downloads a browser of its own. Idempotent: does nothing when /usr/bin/chromium and
# chromedriver are already there. Without apt-get (not Debian/Ubuntu) or without root it
# prints a note and exits 0: tests/browser then skip with a reason that names this script.
set -euo pipefail

have_all() {
  [ -x /usr/bin/chromium ] && command -v chromedriver >/dev/null 2>&1
}

if have_all; then
  echo "browser-setup: chromium and chromium-driver already installed"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "browser-setup: apt-get not found; install chromium yourself" \
    "(the browser tests are skipped until then)"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "browser-setup: not root and no passwordless sudo; install chromium yourself" \
      "(the browser tests are skipped until then)"
    exit 0
  fi
fi

export DEBIAN_FRONTEND=noninteractive
echo "browser-setup: installing chromium and chromium-driver with apt-get"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core \
  >/dev/null

if have_all; then
  version=$(dpkg-query -W -f='${Version}' chromium 2>/dev/null || echo "?")
  echo "browser-setup: done (chromium $version)"
else
  echo "browser-setup: apt-get finished but /usr/bin/chromium or chromedriver is missing" >&2
  exit 1
fi
