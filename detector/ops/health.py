"""HTTP endpoints on the metrics port: ``/metrics``, ``/healthz``, ``/readyz``.

``/healthz`` answers 200 while the loop keeps turning; ``/readyz`` answers
200 once partitions are assigned, a model is loaded and the producer is
connected, so an orchestrator sends no traffic to, and restarts, the right
instances.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Check = Callable[[], dict[str, bool]]


class HealthServer:
    """Serves metrics and probes from a daemon thread.

    Args:
        host: Address to bind.
        port: Port to bind (0 picks a free one; see :attr:`port`).
        registry: Prometheus registry to expose.
        alive: Liveness checks by name.
        ready: Readiness checks by name.
    """

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry, alive: Check, ready: Check
    ) -> None:
        handler = _handler(registry, alive, ready)
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="health", daemon=True
        )

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(
    registry: CollectorRegistry, alive: Check, ready: Check
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif self.path in ("/healthz", "/readyz"):
                checks = (alive if self.path == "/healthz" else ready)()
                status = 200 if all(checks.values()) else 503
                self._send(status, json.dumps(checks).encode(), "application/json")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # probes every few seconds are not worth a log line

    return Handler
