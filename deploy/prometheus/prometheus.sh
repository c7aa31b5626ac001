#!/usr/bin/env bash
# Debian's Prometheus (`prometheus` and `promtool`), for checking the alerting rules and the
# dashboards' queries against a real one.
#   prometheus.sh install   apt-get install prometheus when promtool is missing (root); the Debian
#                           service it brings is stopped and disabled: the tests start their own
#   prometheus.sh start     start on PROMETHEUS_PORT (9090) with PROMETHEUS_DIR/prometheus.yml, its
#                           data in PROMETHEUS_DIR (rule files beside the configuration)
#   prometheus.sh stop      stop it
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../lib.sh
source "$here/../lib.sh"
port="${PROMETHEUS_PORT:-9090}"
dir="${PROMETHEUS_DIR:-$here/.data}"
pidfile="$dir/prometheus.pid"

install() {
  command -v promtool >/dev/null 2>&1 && return 0
  echo "prometheus: installing Debian's prometheus" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  if command -v systemctl >/dev/null 2>&1; then systemctl disable --now prometheus >/dev/null 2>&1 || true; fi
}

start() {
  install
  [ -f "$dir/prometheus.yml" ] || { echo "prometheus: no configuration at $dir/prometheus.yml" >&2; exit 1; }
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "prometheus: already running (pid $(cat "$pidfile"))" >&2; return 0
  fi
  if foreign_server prometheus "$port"; then return 0; fi
  (cd "$dir" && exec prometheus --config.file=prometheus.yml --storage.tsdb.path="$dir/data" \
    --web.listen-address="127.0.0.1:$port" --web.enable-lifecycle) </dev/null >"$dir/prometheus.log" 2>&1 &
  echo $! > "$pidfile"
  for _ in $(seq 1 300); do
    if answers "$port"; then echo "prometheus: listening on 127.0.0.1:$port" >&2; return 0; fi
    kill -0 "$(cat "$pidfile")" 2>/dev/null || { echo "prometheus: exited; see $dir/prometheus.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "prometheus: not listening; see $dir/prometheus.log" >&2; exit 1
}

stop() {
  stop_process prometheus "$pidfile"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
