# Shared by the local service scripts in deploy/*/ (sourced, not run).

# stop_process NAME PIDFILE: SIGTERM, wait up to 30 s for a clean exit, then SIGKILL.
stop_process() {
  local name="$1" pidfile="$2" pid
  [ -f "$pidfile" ] || { echo "$name: not running" >&2; return 0; }
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
  echo "$name: stopped" >&2
}

# answers PORT: true when something accepts connections on 127.0.0.1:PORT.
answers() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# foreign_server NAME PORT...: for a start that found no process of its own. True when another
# server holds one of the ports; with OWN_PORTS=1 (the tests) that is an error naming the port.
foreign_server() {
  local name="$1" port; shift
  for port in "$@"; do
    if answers "$port"; then
      if [ "${OWN_PORTS:-0}" = 1 ]; then
        echo "$name: 127.0.0.1:$port is already taken by a process this script did not start; stop it or choose other ports" >&2
        exit 1
      fi
      echo "$name: already running (something answers on 127.0.0.1:$port; not started here)" >&2
      return 0
    fi
  done
  return 1
}
