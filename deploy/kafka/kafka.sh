#!/usr/bin/env bash
# A real single-node Apache Kafka broker (KRaft) as a local process, from Maven Central jars.
#   kafka.sh fetch   copy the broker's jars into .libs (once; Maven's cache makes repeats cheap)
#   kafka.sh start   format a storage dir, start the broker, wait until it serves clients
#   kafka.sh launch  the same without the wait; kafka.sh wait: the wait (a cluster's nodes are all
#                    launched before any can serve: its controllers need a quorum)
#   kafka.sh stop    stop the broker started with the same KAFKA_DATA_DIR
# Env: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093), KAFKA_DATA_DIR (deploy/kafka/.data),
#      KAFKA_HEAP (512m), KAFKA_START_TIMEOUT (90 s).
#      One node of a cluster (cluster.sh): KAFKA_NODE_ID (1), KAFKA_VOTERS (the controllers,
#      ID@HOST:PORT,...; default this node alone), KAFKA_CLUSTER_ID (shared by the nodes), and
#      KAFKA_REPLICAS (1), every topic's replicas; min.insync.replicas is 2 where there are 2 or more.
#      KAFKA_SECURED: a folder for the secured broker's secrets. When set, the client listener is
#      SASL_SSL (SCRAM) with ACLs (server-secured.properties.in): tls.sh writes the certificates into
#      its tls/, and the SCRAM users `broker` (between brokers) and `admin` (a super user, who creates
#      the others and their ACLs: `pipeline topics acls --apply`) get random passwords in
#      NAME.password (0600), all once; the storage is formatted with those users.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../lib.sh
source "$here/../lib.sh"
libs="$here/.libs"
port="${KAFKA_PORT:-9092}"
cport="${KAFKA_CONTROLLER_PORT:-9093}"
data="${KAFKA_DATA_DIR:-$here/.data}"
pidfile="$data/kafka.pid"
node="${KAFKA_NODE_ID:-1}"
voters="${KAFKA_VOTERS:-$node@127.0.0.1:$cport}"
replicas="${KAFKA_REPLICAS:-1}"
min_isr=$(( replicas >= 2 ? 2 : 1 ))

fetch() {
  if [ -f "$libs/.complete" ]; then return 0; fi
  echo "kafka: fetching broker jars from Maven Central" >&2
  (cd "$here" && mvn -q -B dependency:copy-dependencies -DoutputDirectory="$libs" -DincludeScope=runtime)
  touch "$libs/.complete"
}

secrets="${KAFKA_SECURED:-}"

write_config() {
  mkdir -p "$data/logs"
  if [ -z "$secrets" ]; then
    sed -e "s#@PORT@#$port#g" -e "s#@CPORT@#$cport#g" -e "s#@LOGDIR@#$data/logs#g" -e "s#@NODE@#$node#g" \
      -e "s#@VOTERS@#$voters#g" -e "s#@REPLICAS@#$replicas#g" -e "s#@MIN_ISR@#$min_isr#g" \
      "$here/server.properties.in" > "$data/server.properties"
    return 0
  fi
  bash "$here/tls.sh" "$secrets/tls"
  local name
  for name in broker admin; do
    [ -s "$secrets/$name.password" ] || (umask 077 && openssl rand -hex 24 > "$secrets/$name.password")
  done
  (umask 077 && sed -e "s#@PORT@#$port#g" -e "s#@CPORT@#$cport#g" -e "s#@LOGDIR@#$data/logs#g" \
    -e "s#@SECRETS@#$secrets#g" -e "s#@BROKER_PASSWORD@#$(cat "$secrets/broker.password")#g" \
    "$here/server-secured.properties.in" > "$data/server.properties")
}

# The SCRAM users the storage is formatted with (secured broker only).
scram_users() {
  [ -n "$secrets" ] || return 0
  local name
  for name in broker admin; do
    printf '%s\n' --add-scram "SCRAM-SHA-512=[name=$name,password=$(cat "$secrets/$name.password")]"
  done
}

jvm_args=("-Xmx${KAFKA_HEAP:-512m}" "-Xms${KAFKA_HEAP:-512m}" -XX:+UseG1GC
  "-Dlog4j.configuration=file:$here/log4j.properties" "-Dkafka.logs.dir=$data" -cp "$libs/*")

launch() {
  fetch
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "kafka: already running (pid $(cat "$pidfile"))" >&2; return 0
  fi
  if foreign_server kafka "$port" "$cport"; then return 0; fi
  write_config
  local cluster_id
  cluster_id="${KAFKA_CLUSTER_ID:-$(cat "$data/cluster.id" 2>/dev/null || java "${jvm_args[@]}" kafka.tools.StorageTool random-uuid | tail -n 1)}"
  echo "$cluster_id" > "$data/cluster.id"
  local users=()
  mapfile -t users < <(scram_users)
  java "${jvm_args[@]}" kafka.tools.StorageTool format -t "$cluster_id" -c "$data/server.properties" \
    --ignore-formatted "${users[@]}" >/dev/null
  # A restart's readiness is its own log's: the previous run's is set aside.
  [ -f "$data/broker.out" ] && mv "$data/broker.out" "$data/broker.out.1"
  # Started directly (not through a function) so $! is the broker's own pid.
  java "${jvm_args[@]}" kafka.Kafka "$data/server.properties" > "$data/broker.out" 2>&1 &
  echo $! > "$pidfile"
}

wait_ready() {
  [ -f "$pidfile" ] || { echo "kafka: not launched (no $pidfile)" >&2; exit 1; }
  local deadline=$(( $(date +%s) + ${KAFKA_START_TIMEOUT:-90} ))
  until grep -q "Kafka Server started" "$data/broker.out" 2>/dev/null; do
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "kafka: broker exited; last lines of $data/broker.out:" >&2; tail -n 30 "$data/broker.out" >&2; exit 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then echo "kafka: not ready in time" >&2; exit 1; fi
    sleep 0.5
  done
  echo "kafka: ready on 127.0.0.1:$port${secrets:+ (SASL_SSL)} (pid $(cat "$pidfile"), data $data)" >&2
}

start() {
  launch
  if [ -f "$pidfile" ]; then wait_ready; fi  # else another server holds the ports (foreign_server)
}

stop() {
  stop_process kafka "$pidfile"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  launch) launch ;;
  wait) wait_ready ;;
  stop) stop ;;
  *) echo "usage: $0 fetch|start|launch|wait|stop" >&2; exit 2 ;;
esac
