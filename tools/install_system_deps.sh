#!/usr/bin/env bash
# The Debian packages some tests need: chromium and chromium-driver (the dashboard's browser tests, through
# selenium) and prometheus (the Prometheus integration test; promtool checks the generated config).
#
# Idempotent: installs only what is missing, with apt-get when running as root or with passwordless sudo.
# Never fails (`make test` runs it first): a package it cannot install is named, one line each, with the
# tests that will be skipped for it; pytest's summary (-ra) then gives each skip's reason.
# FOGLINE_NO_SYSTEM_DEPS=1 only reports, installing nothing.
set -u

# package, the command it provides, the tests that need it
PACKAGES=(
  "chromium|chromium|the dashboard's browser tests"
  "chromium-driver|chromedriver|the dashboard's browser tests"
  "prometheus|prometheus|tests/integration/test_prometheus.py and the promtool checks of tests/unit/test_prometheus_config.py"
)

missing_packages() {
  local entry package command
  for entry in "${PACKAGES[@]}"; do
    IFS='|' read -r package command _ <<<"$entry"
    command -v "$command" >/dev/null 2>&1 || echo "$package"
  done
}

# How to run apt-get as root here: nothing (we are root), "sudo -n", or no way (returns 1).
root_prefix() {
  if [ "$(id -u)" -eq 0 ]; then
    echo ""
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    echo "sudo -n"
  else
    return 1
  fi
}

install() {
  local prefix log
  if [ "${FOGLINE_NO_SYSTEM_DEPS:-}" = "1" ]; then
    WHY="FOGLINE_NO_SYSTEM_DEPS=1"; return 1
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    WHY="no apt-get on this machine"; return 1
  fi
  if ! prefix=$(root_prefix); then
    WHY="not root and no passwordless sudo"; return 1
  fi
  echo "system-deps: installing $* with apt-get"
  log=$(mktemp)
  if $prefix apt-get update -qq >"$log" 2>&1 &&
     $prefix env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >>"$log" 2>&1; then
    rm -f "$log"; WHY="apt-get installed it, but its command is not on PATH"; return 0
  fi
  WHY="apt-get failed: $(tail -n 1 "$log")"
  rm -f "$log"
  return 1
}

report() {
  local entry package command tests
  for entry in "${PACKAGES[@]}"; do
    IFS='|' read -r package command tests <<<"$entry"
    if ! command -v "$command" >/dev/null 2>&1; then
      echo "system-deps: $package not installed ($WHY): $tests will be skipped"
    fi
  done
}

main() {
  local missing
  missing=$(missing_packages | sort -u)
  [ -z "$missing" ] && return 0
  WHY="not installed"
  # shellcheck disable=SC2086  # one word per package
  install $missing || true
  report
}

main
exit 0
