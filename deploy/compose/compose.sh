#!/usr/bin/env bash
# Debian's docker-compose, for checking docker-compose.yml without a container engine
# (`docker-compose config` needs none; tests/unit/deploy/test_compose.py).
#   compose.sh install   apt-get install docker-compose when it is missing (root)
set -euo pipefail

install() {
  command -v docker-compose >/dev/null 2>&1 && return 0
  echo "compose: installing Debian's docker-compose" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
}

case "${1:-}" in
  install) install ;;
  *) echo "usage: $0 install" >&2; exit 2 ;;
esac
