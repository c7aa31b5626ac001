#!/usr/bin/env bash
# The real NVIDIA Triton Inference Server (the binary shipped in the PyPI wheel nvidia-pytriton),
# serving triton_models/ with the Python backend. On a machine with a GPU it uses the GPU.
# Explicit model control: it starts serving no model; the stack then loads each model's routed
# versions through the repository API (pipeline/models/rollout.py), as `pipeline models publish` does.
# Not strict readiness: with it, one version that failed to load (a bad publish) leaves the server
# unready for good, though every routed version serves; readiness is checked per routed version.
#   triton.sh install   unpack the server into .triton/ and lay out the Python backend (once)
#   triton.sh start     start it, wait until /v2/health/ready answers
#   triton.sh stop      stop the server started with the same TRITON_RUN_DIR
# Env: TRITON_HTTP_PORT (8000), TRITON_GRPC_PORT (8001), TRITON_METRICS_PORT (8002),
#      TRITON_RUN_DIR (deploy/triton/.run), TRITON_MODEL_ENV (the numpy<2 + torch env, .venv-triton),
#      TRITON_MODEL_REPOSITORY (triton_models), TRITON_START_TIMEOUT (120 s), PYTRITON_VERSION (0.7.0),
#      TRITON_MODEL_CONTROL_MODE (explicit).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../lib.sh
source "$here/../lib.sh"
root="$(cd "$here/../.." && pwd)"
dist="$root/.triton"
server="$dist/pytriton/pytriton/tritonserver"
backends="$dist/backends"
http="${TRITON_HTTP_PORT:-8000}"
grpc="${TRITON_GRPC_PORT:-8001}"
metrics="${TRITON_METRICS_PORT:-8002}"
run="${TRITON_RUN_DIR:-$here/.run}"
model_env="${TRITON_MODEL_ENV:-$root/.venv-triton}"
repo="${TRITON_MODEL_REPOSITORY:-$root/triton_models}"
pidfile="$run/triton.pid"
py="${PYTHON:-python3.11}"

install() {
  if [ ! -x "$server/bin/tritonserver" ]; then
    echo "triton: installing the server from nvidia-pytriton==${PYTRITON_VERSION:-0.7.0}" >&2
    "$py" -m pip install -q --no-deps --target "$dist/pytriton" "nvidia-pytriton==${PYTRITON_VERSION:-0.7.0}"
  fi
  # The backend folder needs the stub for our Python beside libtriton_python.so; symlinks keep
  # the bundled libraries resolving relative to the real files.
  local pyver; pyver="$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
  mkdir -p "$backends/python"
  ln -sfn "$server/backends/python/libtriton_python.so" "$backends/python/libtriton_python.so"
  ln -sfn "$server/backends/python/triton_python_backend_utils.py" "$backends/python/triton_python_backend_utils.py"
  ln -sfn "$server/python_backend_stubs/$pyver/triton_python_backend_stub" "$backends/python/triton_python_backend_stub"
}

start() {
  install
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "triton: already running (pid $(cat "$pidfile"))" >&2; return 0
  fi
  if foreign_server triton "$http" "$grpc" "$metrics"; then return 0; fi
  [ -x "$model_env/bin/python3" ] || { echo "triton: model environment $model_env is missing (make setup)" >&2; exit 1; }
  mkdir -p "$run"
  local libdir; libdir="$("$py" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')"
  # The Python backend stub imports the model's packages through the first python3 on PATH.
  PATH="$model_env/bin:$PATH" LD_LIBRARY_PATH="$libdir:${LD_LIBRARY_PATH:-}" \
    "$server/bin/tritonserver" --model-repository="$repo" --backend-directory="$backends" \
    --cache-directory="$server/caches" \
    --http-address=127.0.0.1 --http-port="$http" --grpc-address=127.0.0.1 --grpc-port="$grpc" \
    --metrics-address=127.0.0.1 --metrics-port="$metrics" \
    --model-control-mode="${TRITON_MODEL_CONTROL_MODE:-explicit}" --strict-readiness=false \
    --log-verbose=0 > "$run/triton.out" 2>&1 &
  echo $! > "$pidfile"
  local deadline=$(( $(date +%s) + ${TRITON_START_TIMEOUT:-120} ))
  until curl -sf "http://127.0.0.1:$http/v2/health/ready" >/dev/null 2>&1; do
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "triton: server exited; last lines of $run/triton.out:" >&2; tail -n 30 "$run/triton.out" >&2; exit 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then echo "triton: not ready in time" >&2; tail -n 30 "$run/triton.out" >&2; exit 1; fi
    sleep 0.5
  done
  echo "triton: ready on 127.0.0.1:$http/$grpc (pid $(cat "$pidfile"))" >&2
}

stop() {
  stop_process triton "$pidfile"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
