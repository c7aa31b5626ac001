#!/usr/bin/env bash
# A three-node Apache Kafka cluster (KRaft; each node a broker and a controller) as local processes,
# for failover runs and tests: every topic on 3 replicas, min.insync.replicas 2, the transaction
# state log and the group offsets replicated alike (kafka.sh with KAFKA_REPLICAS=3).
#   cluster.sh start          launch the three nodes, then wait until each serves clients
#   cluster.sh stop           stop them
#   cluster.sh start-node N   start node N (1-3) again, on its storage; cluster.sh stop-node N
# Env: KAFKA_CLUSTER_PORT (9192): node N serves clients on PORT+2(N-1) and its controller listens on
#      the next port; KAFKA_CLUSTER_DIR (deploy/kafka/.cluster), node N's storage in node-N/.
#      Clients bootstrap from 127.0.0.1:9192,127.0.0.1:9194,127.0.0.1:9196 (the defaults).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
base="${KAFKA_CLUSTER_PORT:-9192}"
dir="${KAFKA_CLUSTER_DIR:-$here/.cluster}"
nodes=(1 2 3)
voters=""
for n in "${nodes[@]}"; do voters+="${voters:+,}$n@127.0.0.1:$(( base + 2 * (n - 1) + 1 ))"; done

node() {  # node N VERB: kafka.sh VERB for node N
  local n="$1" verb="$2"
  mkdir -p "$dir/node-$n"
  KAFKA_NODE_ID="$n" KAFKA_VOTERS="$voters" KAFKA_REPLICAS=3 KAFKA_CLUSTER_ID="$(cluster_id)" \
    KAFKA_PORT=$(( base + 2 * (n - 1) )) KAFKA_CONTROLLER_PORT=$(( base + 2 * (n - 1) + 1 )) \
    KAFKA_DATA_DIR="$dir/node-$n" bash "$here/kafka.sh" "$verb"
}

cluster_id() {
  mkdir -p "$dir"
  [ -s "$dir/cluster.id" ] || { bash "$here/kafka.sh" fetch; java -cp "$here/.libs/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1 > "$dir/cluster.id"; }
  cat "$dir/cluster.id"
}

case "${1:-}" in
  start)
    cluster_id >/dev/null
    for n in "${nodes[@]}"; do node "$n" launch; done
    for n in "${nodes[@]}"; do node "$n" wait; done ;;
  stop)  # all at once: a node stopping last would wait for a controller quorum that is gone
    for n in "${nodes[@]}"; do node "$n" stop & done
    wait ;;
  start-node) node "${2:?node 1-3}" start ;;
  stop-node) node "${2:?node 1-3}" stop ;;
  *) echo "usage: $0 start|stop|start-node N|stop-node N" >&2; exit 2 ;;
esac
