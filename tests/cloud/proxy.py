"""A forwarding HTTP proxy in front of a real store server, on 127.0.0.1: it counts requests
and bytes (per method, split into block keys and the rest) and injects faults on demand
(an HTTP status or a connection reset for the next N requests), so tests can watch and disturb
the wire without mocking either side."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


class CountingProxy:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.lock = threading.Lock()
        self.requests: Counter[tuple[str, bool]] = Counter()  # (method, is_block) -> count
        self.bytes_in: Counter[tuple[str, bool]] = Counter()  # request bodies
        self.bytes_out: Counter[tuple[str, bool]] = Counter()  # response bodies
        self.faults: list[int | str] = []  # next faults: an HTTP status, or "reset"
        self.fault_methods: set[str] | None = None
        self.seen_faults: list[tuple[str, int | str]] = []
        self.block_gets: Counter[str] = Counter()  # block file name -> GETs
        self.block_put_delay = 0.0  # seconds each block PUT is held (a slow network)
        self.in_flight_puts = 0
        self.max_in_flight_puts = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body go out in two writes: without TCP_NODELAY the body waits for
            # the client's delayed ACK (40 ms per response on Linux)
            disable_nagle_algorithm = True

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                block = "/chunks/" in unquote(self.path)
                fault = proxy._take_fault(self.command)
                if fault == "reset":
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault is not None:
                    payload = f"<Error><Code>Injected{fault}</Code></Error>".encode()
                    self.send_response(int(fault))
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                slow = block and self.command == "PUT"
                if slow:
                    with proxy.lock:
                        proxy.in_flight_puts += 1
                        proxy.max_in_flight_puts = max(proxy.max_in_flight_puts,
                                                       proxy.in_flight_puts)  # fmt: skip
                    time.sleep(proxy.block_put_delay)
                try:
                    self._forward(body, block)
                finally:
                    if slow:
                        with proxy.lock:
                            proxy.in_flight_puts -= 1

            def _forward(self, body: bytes, block: bool) -> None:
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                with proxy.lock:
                    if block and self.command == "GET":
                        proxy.block_gets[unquote(self.path).rsplit("/", 1)[-1]] += 1
                    proxy.requests[(self.command, block)] += 1
                    proxy.bytes_in[(self.command, block)] += len(body)
                    proxy.bytes_out[(self.command, block)] += len(data)
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _take_fault(self, method: str) -> int | str | None:
        with self.lock:
            if self.faults and (self.fault_methods is None or method in self.fault_methods):
                fault = self.faults.pop(0)
                self.seen_faults.append((method, fault))
                return fault
        return None

    def inject(self, *faults: int | str, methods: set[str] | None = None) -> None:
        with self.lock:
            self.faults = list(faults)
            self.fault_methods = methods
            self.seen_faults = []

    def block_bytes(self) -> int:
        """Block bytes moved either way so far."""
        with self.lock:
            return sum(v for (m, block), v in (self.bytes_in + self.bytes_out).items() if block)

    def block_requests(self) -> int:
        with self.lock:
            return sum(v for (m, block), v in self.requests.items() if block)

    def reset_counts(self) -> None:
        with self.lock:
            self.requests.clear()
            self.bytes_in.clear()
            self.bytes_out.clear()
            self.block_gets.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
