"""Shared fixtures for the data-stage tests: real images and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image


def jpeg(size=(64, 48), color=(200, 30, 30), quality=90) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", size, color)
    for x in range(0, size[0], 8):  # some structure, so truncation really cuts image data
        img.paste((x * 3 % 256, 90, 160), (x, 0, x + 4, size[1]))
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png(size=(40, 40), color=(10, 120, 240)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def png_bomb(width=10_000, height=10_000) -> bytes:
    """A ~100-byte PNG declaring width x height pixels (100 megapixels by default)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    idat = zlib.compress(b"\x00" * 1024)  # a sliver of the (never decoded) pixel data
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class ImageServer:
    """A threaded HTTP server on 127.0.0.1 with a few routes:

    /img/<name> serves `files[name]`; /status/<code> answers that code; /slow sleeps `slow_s` first;
    /delay/<s>/<name> waits s seconds (counting `max_in_flight`) then serves `files[name]`;
    /flaky/<name> fails with 503 `flaky_failures` times per name, then serves `files[name]`.
    """

    def __init__(self, files: dict[str, bytes], slow_s: float = 2.0, flaky_failures: int = 1):
        self.files, self.slow_s, self.flaky_failures = files, slow_s, flaky_failures
        self.hits: dict[str, int] = {}
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                with server._lock:
                    server.hits[self.path] = server.hits.get(self.path, 0) + 1
                server._route(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _route(self, h: BaseHTTPRequestHandler) -> None:
        parts = h.path.strip("/").split("/")
        if parts[0] == "img" and len(parts) == 2 and parts[1] in self.files:
            return self._send(h, 200, self.files[parts[1]])
        if parts[0] == "status":
            return self._send(h, int(parts[1]), b"nope")
        if parts[0] == "slow":
            time.sleep(self.slow_s)
            return self._send(h, 200, self.files.get(parts[-1], b""))
        if parts[0] == "delay" and len(parts) == 3:  # /delay/<seconds>/<name>: slow but within timeout
            # Count requests in flight around the wait only: the reply then reaches the client after
            # the count dropped, so a client's next request cannot overlap its previous one here.
            with self._lock:
                self._in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self._in_flight)
            time.sleep(float(parts[1]))
            with self._lock:
                self._in_flight -= 1
            return self._send(h, 200, self.files[parts[2]])
        if parts[0] == "flaky" and len(parts) == 2:
            if self.hits[h.path] <= self.flaky_failures:
                return self._send(h, 503, b"busy")
            return self._send(h, 200, self.files[parts[1]])
        return self._send(h, 404, b"not found")

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, code: int, body: bytes) -> None:
        try:
            h.send_response(code)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            pass

    def __enter__(self) -> ImageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
