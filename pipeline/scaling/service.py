"""The policy's decision over HTTP, for KEDA's metrics-api scaler and for people.

- `GET /desired`: the latest `Status` as JSON; KEDA reads `desired_workers` (`valueLocation`) against
  a `targetValue` of 1, so its replicas are the policy's count. 503 until the first decision.
- `GET /healthz`: 200 while the process runs. `GET /readyz`: 200 once a decision is made.
- `GET /metrics`: Prometheus.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


def start(host: str, port: int, status: Callable[[], Any]) -> ThreadingHTTPServer:
    """Serve on a daemon thread; `status()` gives the latest `Status` or None."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            current = status()
            if path == "/desired":
                if current is None:
                    self._send(503, {"error": "no_decision_yet", "message": "the lag has not been read yet"})
                else:
                    self._send(200, current.to_dict())
            elif path == "/healthz":
                self._send(200, {"status": "ok"})
            elif path == "/readyz":
                self._send(200 if current is not None else 503, {"ready": current is not None})
            elif path == "/metrics":
                self._reply(200, generate_latest(), CONTENT_TYPE_LATEST)
            else:
                self._send(404, {"error": "not_found", "message": f"no route {path}"})

        def _send(self, code: int, body: dict[str, Any]) -> None:
            self._reply(code, orjson.dumps(body), "application/json")

        def _reply(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # scrapes every few seconds: not logged
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="scale-service", daemon=True).start()
    return server
