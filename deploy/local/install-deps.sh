#!/usr/bin/env bash
# Installs the system binaries taskmedic's tests and demo run for real, only when missing:
# PostgreSQL (initdb/pg_ctl), Redis, Prometheus (with promtool), Alertmanager (with amtool) and
# jsonnet (the monitoring mixin in deploy/mixin).
set -euo pipefail
have_pg() { command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; }
missing=()
have_pg || missing+=(postgresql)
command -v psql >/dev/null || missing+=(postgresql-client)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v prometheus >/dev/null && command -v promtool >/dev/null || missing+=(prometheus)
command -v prometheus-alertmanager >/dev/null && command -v amtool >/dev/null || missing+=(prometheus-alertmanager)
command -v jsonnet >/dev/null || missing+=(jsonnet)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing: ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts packaged daemons on install; the tests and the demo run their own instances.
for svc in prometheus prometheus-alertmanager; do
  $sudo systemctl disable --now "$svc" >/dev/null 2>&1 || true
done
