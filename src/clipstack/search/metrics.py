"""Server metrics in Prometheus' text exposition format (version 0.0.4), without a client library.

Counters of requests by route and status, a latency histogram per route, and a histogram of how many
queries the engine answered per batch and of the seconds each batch took (encode, search and lookup:
the server's own work, without HTTP). Request counters are updated on the event loop thread, batch
histograms by whichever thread ran the batch; the engine never runs two batches at once.
"""

from __future__ import annotations

import bisect
import itertools
from collections import defaultdict

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
BATCH_SECONDS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # per bucket, not cumulative: one increment a value
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.total += 1
        self.sum += value
        self.counts[bisect.bisect_left(self.buckets, value)] += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        cumulative = list(itertools.accumulate(self.counts[:-1]))
        out = [f'{name}_bucket{{{labels}{sep}le="{upper}"}} {count}'
               for upper, count in zip(self.buckets, cumulative)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.total}')
        suffix = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{suffix} {self.sum:.6f}", f"{name}_count{suffix} {self.total}"]
        return out


class Metrics:
    def __init__(self):
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.batches = Histogram(BATCH_BUCKETS)
        self.batch_seconds = Histogram(BATCH_SECONDS_BUCKETS)
        self.queries: dict[str, int] = defaultdict(int)
        self.ignored_fields: dict[str, int] = defaultdict(int)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests[(route, status)] += 1
        self.latency.setdefault(route, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def observe_batch(self, queries: int, seconds: float) -> None:
        self.batches.observe(queries)
        self.batch_seconds.observe(seconds)

    def render(self, gauges: dict[str, float] | None = None) -> str:
        lines = ["# HELP clipstack_requests_total HTTP requests by route and status code.",
                 "# TYPE clipstack_requests_total counter"]
        for (route, status), count in sorted(self.requests.items()):
            lines.append(f'clipstack_requests_total{{route="{route}",status="{status}"}} {count}')
        lines += ["# HELP clipstack_request_seconds Request latency by route.",
                  "# TYPE clipstack_request_seconds histogram"]
        for route, hist in sorted(self.latency.items()):
            lines += hist.lines("clipstack_request_seconds", f'route="{route}"')
        lines += ["# HELP clipstack_batch_size Queries answered per engine batch.",
                  "# TYPE clipstack_batch_size histogram", *self.batches.lines("clipstack_batch_size")]
        lines += ["# HELP clipstack_batch_seconds Seconds per engine batch: encode, search, lookup.",
                  "# TYPE clipstack_batch_seconds histogram",
                  *self.batch_seconds.lines("clipstack_batch_seconds")]
        lines += ["# HELP clipstack_queries_total Search queries by kind (text, image, vector).",
                  "# TYPE clipstack_queries_total counter"]
        lines += [f'clipstack_queries_total{{kind="{k}"}} {v}' for k, v in sorted(self.queries.items())]
        lines += ["# HELP clipstack_ignored_fields_total Unsupported request fields accepted and ignored.",
                  "# TYPE clipstack_ignored_fields_total counter"]
        lines += [f'clipstack_ignored_fields_total{{field="{k}"}} {v}'
                  for k, v in sorted(self.ignored_fields.items())]
        for name, value in (gauges or {}).items():
            lines += [f"# TYPE {name} gauge", f"{name} {value}"]
        return "\n".join(lines) + "\n"
