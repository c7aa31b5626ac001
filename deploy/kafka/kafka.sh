#!/usr/bin/env bash
# A real single-node Apache Kafka broker (KRaft) as a local process, from Maven Central jars.
#   kafka.sh fetch   copy the broker's jars into .libs (once; Maven's cache makes repeats cheap)
#   kafka.sh start   format a storage dir, start the broker, wait until it serves clients
#   kafka.sh stop    stop the broker started with the same KAFKA_DATA_DIR
# Env: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093), KAFKA_DATA_DIR (deploy/kafka/.data),
#      KAFKA_HEAP (512m), KAFKA_START_TIMEOUT (90 s).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../lib.sh
source "$here/../lib.sh"
libs="$here/.libs"
port="${KAFKA_PORT:-9092}"
cport="${KAFKA_CONTROLLER_PORT:-9093}"
data="${KAFKA_DATA_DIR:-$here/.data}"
pidfile="$data/kafka.pid"

fetch() {
  if [ -f "$libs/.complete" ]; then return 0; fi
  echo "kafka: fetching broker jars from Maven Central" >&2
  (cd "$here" && mvn -q -B dependency:copy-dependencies -DoutputDirectory="$libs" -DincludeScope=runtime)
  touch "$libs/.complete"
}

write_config() {
  mkdir -p "$data/logs"
  sed -e "s#@PORT@#$port#g" -e "s#@CPORT@#$cport#g" -e "s#@LOGDIR@#$data/logs#g" \
    "$here/server.properties.in" > "$data/server.properties"
}

jvm_args=("-Xmx${KAFKA_HEAP:-512m}" "-Xms${KAFKA_HEAP:-512m}" -XX:+UseG1GC
  "-Dlog4j.configuration=file:$here/log4j.properties" "-Dkafka.logs.dir=$data" -cp "$libs/*")

start() {
  fetch
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "kafka: already running (pid $(cat "$pidfile"))" >&2; return 0
  fi
  if foreign_server kafka "$port" "$cport"; then return 0; fi
  write_config
  local cluster_id
  cluster_id="$(cat "$data/cluster.id" 2>/dev/null || java "${jvm_args[@]}" kafka.tools.StorageTool random-uuid | tail -n 1)"
  echo "$cluster_id" > "$data/cluster.id"
  java "${jvm_args[@]}" kafka.tools.StorageTool format -t "$cluster_id" -c "$data/server.properties" --ignore-formatted >/dev/null
  # Started directly (not through a function) so $! is the broker's own pid.
  java "${jvm_args[@]}" kafka.Kafka "$data/server.properties" > "$data/broker.out" 2>&1 &
  echo $! > "$pidfile"
  local deadline=$(( $(date +%s) + ${KAFKA_START_TIMEOUT:-90} ))
  until grep -q "Kafka Server started" "$data/broker.out" 2>/dev/null; do
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "kafka: broker exited; last lines of $data/broker.out:" >&2; tail -n 30 "$data/broker.out" >&2; exit 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then echo "kafka: not ready in time" >&2; exit 1; fi
    sleep 0.5
  done
  echo "kafka: ready on 127.0.0.1:$port (pid $(cat "$pidfile"), data $data)" >&2
}

stop() {
  stop_process kafka "$pidfile"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 fetch|start|stop" >&2; exit 2 ;;
esac
