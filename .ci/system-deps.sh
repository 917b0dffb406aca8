#!/usr/bin/env bash
# Installs the Debian packages the test suite starts for real, only when they are missing.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1; }
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1; }
[[ -n "$(pg_bin)" && -x "$(pg_bin)/initdb" ]] || need+=(postgresql)
have redis-server || need+=(redis-server)
have prometheus || need+=(prometheus)
have promtool || need+=(prometheus)
have prometheus-alertmanager || have alertmanager || need+=(prometheus-alertmanager)
have amtool || need+=(prometheus-alertmanager)
have chromium || need+=(chromium)
have docker-compose || need+=(docker-compose)
have jq || need+=(jq)
if ((${#need[@]})); then
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # --no-install-recommends keeps the install small; services are started by the tests themselves.
  $SUDO apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
  # Debian starts these as system services on install; the tests start their own instances.
  for svc in postgresql redis-server prometheus prometheus-alertmanager; do
    $SUDO service "$svc" stop >/dev/null 2>&1 || true
  done
fi
