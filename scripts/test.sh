#!/usr/bin/env bash
# The one test command: installs what the tests need on a fresh machine,
# then runs the format check, clippy, the Python peer tests and every Rust
# test (unit and end-to-end). Run from anywhere: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "scripts/test.sh: '$1' is required: $2" >&2; exit 1; }
}
need cargo "install Rust (rustup) with the rustfmt and clippy components"
need python3 "install Python 3.9 or newer with the venv module"
if ! command -v terraform >/dev/null 2>&1 && [ ! -x /usr/local/bin/terraform ]; then
  echo "scripts/test.sh: the terraform CLI (>= 1.4) is required on PATH for the end-to-end tests" >&2
  exit 1
fi
export PATH="$PATH:/usr/local/bin"

# Debian packages the tests need, with apt's package lists updated once.
apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then
    apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

# nginx for the reverse-proxy tests, which start their own nginx processes.
# Debian's package would also start and enable nginx as a system service on
# port 80; keep it from starting while installing, and stop it if it runs.
if [ ! -x /usr/sbin/nginx ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "scripts/test.sh: nginx is required at /usr/sbin/nginx for the end-to-end tests: install Debian's nginx package" >&2
    exit 1
  fi
  policy_added=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    policy_added=1
  fi
  installed=0
  apt_install nginx || installed=$?
  if [ -n "$policy_added" ]; then
    rm -f /usr/sbin/policy-rc.d
  fi
  [ "$installed" = 0 ] || exit "$installed"
fi
if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled --quiet nginx 2>/dev/null; then
  systemctl disable --quiet nginx
fi
if [ -d /run/systemd/system ] && systemctl is-active --quiet nginx; then
  systemctl stop nginx
elif [ -s /run/nginx.pid ] && kill -0 "$(cat /run/nginx.pid)" 2>/dev/null; then
  /usr/sbin/nginx -s quit
fi

# Database servers for the db store's tests, which start their own private
# PostgreSQL and MariaDB processes (own directories, sockets and ports).
# Debian's packages would also start and enable the system services; keep
# them from starting while installing, and stop and disable them if they run.
apt_install_without_services() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "scripts/test.sh: install $* (Debian package names) for the db store's tests" >&2
    exit 1
  fi
  local policy_added= installed=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    policy_added=1
  fi
  apt_install "$@" || installed=$?
  if [ -n "$policy_added" ]; then
    rm -f /usr/sbin/policy-rc.d
  fi
  [ "$installed" = 0 ] || exit "$installed"
}
if [ ! -x /usr/sbin/mariadbd ] && [ ! -x /usr/sbin/mysqld ] || ! command -v mariadb >/dev/null 2>&1; then
  apt_install_without_services mariadb-server mariadb-client
fi
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1; then
  apt_install_without_services postgresql postgresql-client
fi
for service in mariadb postgresql; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled --quiet "$service" 2>/dev/null; then
    systemctl disable --quiet "$service"
  fi
  if [ -d /run/systemd/system ]; then
    if systemctl is-active --quiet "$service"; then systemctl stop "$service"; fi
  elif command -v service >/dev/null 2>&1 && service "$service" status >/dev/null 2>&1; then
    service "$service" stop >/dev/null 2>&1 || true
  fi
done

# openssl makes the TLS tests' certificates; curl is their second client.
for tool in openssl curl; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
      echo "scripts/test.sh: '$tool' is required by the TLS tests: install it" >&2
      exit 1
    fi
    apt_install "$tool"
  fi
done

# GNU time reads the peak memory of command-line runs in the large-state tests.
if [ ! -x /usr/bin/time ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "scripts/test.sh: /usr/bin/time is required by the large-state tests: install GNU time" >&2
    exit 1
  fi
  apt_install time
fi

# The dashboard's browser tests: Debian's Chromium, driven from Node.js by
# playwright-core (pinned in tests/ui/package-lock.json; it downloads no
# browser of its own).
# Only what is missing: a Node.js from elsewhere (NodeSource's package
# brings its own npm and conflicts with Debian's npm package) is kept.
ui_missing=()
[ -x /usr/bin/chromium ] || ui_missing+=(chromium)
command -v node >/dev/null 2>&1 || ui_missing+=(nodejs)
command -v npm >/dev/null 2>&1 || ui_missing+=(npm)
if [ "${#ui_missing[@]}" -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "scripts/test.sh: the dashboard tests need /usr/bin/chromium, node and npm: install ${ui_missing[*]}" >&2
    exit 1
  fi
  apt_install "${ui_missing[@]}"
fi
ui_stamp=tests/ui/node_modules/.package-lock.sha256
ui_sum=$(sha256sum tests/ui/package-lock.json | cut -d' ' -f1)
if [ "$(cat "$ui_stamp" 2>/dev/null)" != "$ui_sum" ]; then
  (cd tests/ui && npm ci --no-audit --no-fund --loglevel=error)
  echo "$ui_sum" > "$ui_stamp"
fi

# Real peers for the tests (the moto S3 server, Alibaba's OSS SDKs, pytest),
# in a virtualenv of the repository, never in the system Python.
if [ ! -x .venv/bin/python ]; then
  if ! python3 -m venv .venv; then
    # Debian's python3 ships without venv and ensurepip.
    rm -rf .venv
    if command -v apt-get >/dev/null 2>&1; then
      apt_install python3-venv
      python3 -m venv .venv
    else
      echo "scripts/test.sh: python3 cannot create a virtualenv: install its venv module" >&2
      exit 1
    fi
  fi
fi
req_stamp=.venv/.requirements.sha256
req_sum=$(sha256sum tests/peers/requirements.txt | cut -d' ' -f1)
if [ "$(cat "$req_stamp" 2>/dev/null)" != "$req_sum" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/peers/requirements.txt
  echo "$req_sum" > "$req_stamp"
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
echo "== Python peer tests"
.venv/bin/python -m pytest -q tests/peers
echo "== cargo test"
# Most tests wait on terraform and server processes, not on the CPU.
cargo test --all-targets -- --test-threads "${STATEGATE_TEST_THREADS:-4}"
