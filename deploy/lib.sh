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
