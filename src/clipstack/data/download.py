"""Ingest's fetch step: image bytes from a local path, an http(s) URL, or bytes already in hand.

URLs are fetched with a per-request timeout and a few retries with backoff, by a bounded pool of
threads per worker process (downloading is I/O bound; the decode/resize step is not, and runs in the
worker processes). Every failure maps to a ledger reason: `missing_file`, `http_error`, `timeout`, or
`unsupported_url` (a scheme other than http, https or file).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from clipstack.data.shards import SampleError

T = TypeVar("T")
USER_AGENT = "clipstack-ingest/0.1 (+https://github.com/clipstack)"


@dataclass
class Fetcher:
    timeout: float = 10.0
    retries: int = 2
    backoff: float = 0.2
    max_bytes: int = 64 * 1024 * 1024

    def __call__(self, location: str) -> bytes:
        """Bytes at `location` (a path, `file://` or `http(s)://` URL); raises `SampleError`."""
        if not location:
            raise SampleError("missing_file", "no image path or URL given (or no image in the sample)")
        if is_url(location):
            return self._http(location)
        scheme = location.split("://", 1)[0] if "://" in location else ""
        if scheme and scheme.lower() != "file":
            raise SampleError("unsupported_url", f"{location}: unsupported URL scheme {scheme!r} "
                                                 "(expected http, https, file or a local path)")
        path = location.removeprefix("file://")
        try:
            with open(path, "rb") as fh:
                return fh.read(self.max_bytes + 1)
        except IsADirectoryError:
            raise SampleError("missing_file", f"{path}: is a folder, not an image file") from None
        except (FileNotFoundError, NotADirectoryError):
            raise SampleError("missing_file", f"{path}: no such file") from None
        except OSError as exn:
            raise SampleError("missing_file", f"{path}: cannot read ({exn.strerror or exn})") from None

    def _http(self, url: str) -> bytes:
        last: SampleError | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                return self._get(url)
            except SampleError as err:
                last = err
                if err.reason == "http_error" and getattr(err, "permanent", False):
                    break  # a 404 stays a 404; do not hammer the server
        assert last is not None
        if attempt:
            last.detail = f"{last.detail} (tried {attempt + 1} times)"
            last.args = (last.detail,)
        raise last

    def _get(self, url: str) -> bytes:
        req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                data = resp.read(self.max_bytes + 1)
        except urllib.error.HTTPError as exn:
            err = SampleError("http_error", f"{url}: HTTP {exn.code} {exn.reason}")
            err.permanent = 400 <= exn.code < 500 and exn.code not in (408, 429)  # type: ignore[attr-defined]
            raise err from None
        except TimeoutError:
            raise SampleError("timeout", f"{url}: no response within {self.timeout:g} s") from None
        except urllib.error.URLError as exn:
            if isinstance(exn.reason, TimeoutError):
                raise SampleError("timeout", f"{url}: no response within {self.timeout:g} s") from None
            raise SampleError("http_error", f"{url}: {exn.reason}") from None
        except (OSError, ValueError) as exn:  # connection reset mid-body, bad URL, ...
            raise SampleError("http_error", f"{url}: {type(exn).__name__}: {exn}") from None
        if len(data) > self.max_bytes:
            raise SampleError("http_error", f"{url}: larger than {self.max_bytes} bytes")
        return data


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def map_bounded(fn: Callable[[T], object], items: Iterable[T], threads: int,
                ahead: int = 4) -> Iterator[object]:
    """`fn` over `items` in order, at most `threads` calls in flight and `threads * ahead` results
    waiting (so fast downloads cannot pile a whole shard of images up in memory). Exceptions are
    returned in place of results, for the caller to record."""
    def safe(item: T) -> object:
        try:
            return fn(item)
        except Exception as exn:  # noqa: BLE001 -- handed back to the caller, which records the drop
            return exn

    if threads <= 1:
        yield from (safe(item) for item in items)
        return
    window: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fetch") as pool:
        for item in items:
            window.append(pool.submit(safe, item))
            if len(window) >= threads * ahead:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
