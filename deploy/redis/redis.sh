#!/usr/bin/env bash
# Redis (Debian's redis-server) for the Feast online store's production option.
#   redis.sh install   apt-get install redis-server when it is missing (root)
#   redis.sh start     start on REDIS_PORT (6379) with append-only persistence in REDIS_DIR
#   redis.sh stop      stop it (the data survives in REDIS_DIR for the next start)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../lib.sh
source "$here/../lib.sh"
port="${REDIS_PORT:-6379}"
dir="${REDIS_DIR:-$here/.data}"
pidfile="$dir/redis.pid"

install() {
  command -v redis-server >/dev/null 2>&1 && return 0
  echo "redis: installing Debian's redis-server" >&2
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
}

start() {
  install
  mkdir -p "$dir"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "redis: already running (pid $(cat "$pidfile"))" >&2; return 0
  fi
  if foreign_server redis "$port"; then return 0; fi
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --appendonly yes --save "" \
    --daemonize no --logfile "$dir/redis.log" </dev/null >/dev/null 2>&1 &
  echo $! > "$pidfile"
  for _ in $(seq 1 100); do
    redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && { echo "redis: ready on 127.0.0.1:$port" >&2; return 0; }
    sleep 0.1
  done
  echo "redis: not ready; see $dir/redis.log" >&2; exit 1
}

stop() {
  stop_process redis "$pidfile"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
