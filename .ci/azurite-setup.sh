#!/usr/bin/env bash
# Installs Azurite (the Azure Storage emulator, from npm) into .ci/azurite/, which is gitignored.
#
# The Azure Blob result-store tests (tests/agent/results) start `azurite-blob` from
# .ci/azurite/node_modules/.bin on a free 127.0.0.1 port with a temporary location. Idempotent:
# does nothing when the pinned version is already installed (the tests also run it when node
# and npm are present but Azurite is not). Without node/npm it prints a note
# and exits 0: those tests are then skipped with a reason that names this script.
set -euo pipefail
cd "$(dirname "$0")"

AZURITE_VERSION=3.37.0
PREFIX=azurite
BIN="$PREFIX/node_modules/.bin/azurite-blob"

if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
  echo "azurite-setup: node/npm not found; install Node.js >= 18 and rerun .ci/azurite-setup.sh" \
    "(the Azure Blob result-store tests are skipped until then)"
  exit 0
fi

installed=""
if [ -f "$PREFIX/node_modules/azurite/package.json" ]; then
  installed=$(node -p "require('./$PREFIX/node_modules/azurite/package.json').version")
fi
if [ -x "$BIN" ] && [ "$installed" = "$AZURITE_VERSION" ]; then
  echo "azurite-setup: azurite $AZURITE_VERSION already installed"
  exit 0
fi

echo "azurite-setup: installing azurite $AZURITE_VERSION into .ci/$PREFIX"
mkdir -p "$PREFIX"
npm install --prefix "$PREFIX" --no-save --no-audit --no-fund --loglevel=error \
  "azurite@$AZURITE_VERSION" >/dev/null
if [ -x "$BIN" ]; then
  echo "azurite-setup: done ($BIN)"
else
  echo "azurite-setup: npm finished but $BIN is missing" >&2
  exit 1
fi
