"""A forwarding HTTP proxy in front of a search server that injects faults on demand: bulk items answered with 429
(throttling), whole bulk requests refused, or every connection dropped (the engine going away mid-publish). It also
records the requests and headers clients send."""

from __future__ import annotations

import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server"}


class FaultProxy:
    """A forwarding HTTP proxy that can throttle bulk items or drop every connection."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.lock = threading.Lock()
        self.throttle_bulk_requests = 0  # the next N bulk requests answer every other item with 429
        self.reject_bulk_requests = 0  # the next N bulk requests are refused as a whole with HTTP 429
        self.drop_after_bulk: int | None = None  # after N more bulk requests, drop every connection
        self.dropping = False
        self.bulk_requests = 0
        self.throttled_ids: list[str] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        handler = type("Handler", (_ProxyHandler,), {"proxy": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def heal(self) -> None:
        with self.lock:
            self.throttle_bulk_requests = 0
            self.reject_bulk_requests = 0
            self.drop_after_bulk = None
            self.dropping = False

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list, bytes]:
        connection = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            sent = {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}
            connection.request(method, path, body=body or None, headers=sent)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()

    def throttled_bulk(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list, bytes]:
        """Answer even-numbered items with 429 without indexing them; forward the others."""
        lines = [line for line in body.split(b"\n") if line.strip()]
        entries: list[list[bytes]] = []
        position = 0
        while position < len(lines):
            operation = next(iter(json.loads(lines[position])))
            size = 1 if operation == "delete" else 2
            entries.append(lines[position : position + size])
            position += size
        throttled = {n for n in range(len(entries)) if n % 2 == 0}
        kept = [entry for n, entry in enumerate(entries) if n not in throttled]
        status, response_headers, forwarded_items = 200, [], []
        if kept:
            payload = b"\n".join(line for entry in kept for line in entry) + b"\n"
            status, response_headers, data = self.forward("POST", path, headers, payload)
            forwarded_items = json.loads(data)["items"]
        else:
            response_headers = [("Content-Type", "application/json"), ("X-Elastic-Product", "Elasticsearch")]
        items, forwarded = [], iter(forwarded_items)
        for n, entry in enumerate(entries):
            if n not in throttled:
                items.append(next(forwarded))
                continue
            operation, meta = next(iter(json.loads(entry[0]).items()))
            self.throttled_ids.append(meta.get("_id"))
            items.append(
                {
                    operation: {
                        "_index": meta.get("_index"),
                        "_id": meta.get("_id"),
                        "status": 429,
                        "error": {
                            "type": "es_rejected_execution_exception",
                            "reason": "rejected execution of coordinating operation (simulated throttling)",
                        },
                    }
                }
            )
        return status, response_headers, json.dumps({"took": 1, "errors": True, "items": items}).encode()


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle's algorithm each response would wait for a delayed ACK.
    disable_nagle_algorithm = True
    proxy: FaultProxy

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        proxy = self.proxy
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = dict(self.headers.items())
        is_bulk = urlsplit(self.path).path.endswith("/_bulk")
        with proxy.lock:
            proxy.requests.append((self.command, self.path, headers))
            if is_bulk and proxy.drop_after_bulk is not None and not proxy.dropping:
                if proxy.drop_after_bulk == 0:
                    proxy.dropping = True
                else:
                    proxy.drop_after_bulk -= 1
            drop = proxy.dropping
            reject = is_bulk and not drop and proxy.reject_bulk_requests > 0
            if reject:
                proxy.reject_bulk_requests -= 1
            throttle = is_bulk and not drop and not reject and proxy.throttle_bulk_requests > 0
            if throttle:
                proxy.throttle_bulk_requests -= 1
            if is_bulk and not drop:
                proxy.bulk_requests += 1
        if drop:
            # No response at all: the client sees the connection closed, as when the engine dies.
            self.close_connection = True
            return
        if reject:
            status = 429
            response_headers = [("Content-Type", "application/json"), ("X-Elastic-Product", "Elasticsearch")]
            error = {"type": "es_rejected_execution_exception", "reason": "rejected (simulated throttling)"}
            data = json.dumps({"error": {**error, "root_cause": [error]}, "status": 429}).encode()
        elif throttle:
            status, response_headers, data = proxy.throttled_bulk(self.path, headers, body)
        else:
            status, response_headers, data = proxy.forward(self.command, self.path, headers, body)
        self.send_response(status)
        for name, value in response_headers:
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle
