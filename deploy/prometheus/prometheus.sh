#!/usr/bin/env bash
# Debian's Prometheus (`prometheus` and `promtool`), for checking the alerting rules and the
# dashboards' queries against a real one.
#   prometheus.sh install   apt-get install prometheus when promtool is missing (root); the Debian
#                           service it brings is stopped and disabled: the tests start their own
set -euo pipefail

install() {
  command -v promtool >/dev/null 2>&1 && return 0
  echo "prometheus: installing Debian's prometheus" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  if command -v systemctl >/dev/null 2>&1; then systemctl disable --now prometheus >/dev/null 2>&1 || true; fi
}

case "${1:-}" in
  install) install ;;
  *) echo "usage: $0 install" >&2; exit 2 ;;
esac
