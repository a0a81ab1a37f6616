#!/usr/bin/env bash
# What the test suite needs beyond the Python packages that `make test` installs into .venv:
# headless Chromium, which tests/eval/test_report.py uses to render report.html.
# `make test` (and so CI's .ci/run) runs this first. It installs what is missing with apt-get, as
# root directly and otherwise through sudo; where neither can work it stops at once with the command
# to run, instead of a test failing minutes into the suite.
set -euo pipefail

BROWSERS="chromium chromium-browser google-chrome google-chrome-stable"  # the names the test looks for
PACKAGES="chromium fonts-dejavu-core"

have_browser() {
  local name
  for name in $BROWSERS; do
    command -v "$name" >/dev/null 2>&1 && return 0
  done
  return 1
}

have_browser && exit 0

fail() {
  echo "make test: headless Chromium is needed by tests/eval/test_report.py and is not installed; $1" >&2
  exit 1
}

command -v apt-get >/dev/null 2>&1 || fail "install Chromium with your package manager (this machine has no apt-get), then rerun"
if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && { sudo -n true 2>/dev/null || [ -t 0 ]; }; then
  sudo=(sudo)  # without a password, or asking for it on this terminal
else
  fail "install it with: sudo apt-get install -y --no-install-recommends $PACKAGES"
fi

echo "make test: installing $PACKAGES (headless Chromium for the report test) with apt-get"
"${sudo[@]}" apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $PACKAGES
have_browser || fail "apt-get installed $PACKAGES but none of ($BROWSERS) is on PATH"
