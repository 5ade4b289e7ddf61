"""Prometheus metrics of one server (its own registry, so several apps in one process never share counts)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Requests and errors by endpoint, latency per endpoint and stage, batch sizes and queue depths."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("zscir_requests", "HTTP requests by endpoint and status code.",
                                ["endpoint", "status"], registry=self.registry)
        self.errors = Counter("zscir_errors", "Requests answered with a 4xx or 5xx, by endpoint and error kind.",
                              ["endpoint", "kind"], registry=self.registry)
        self.latency = Histogram("zscir_request_seconds", "Wall time of a request, by endpoint.", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.stage = Histogram("zscir_stage_seconds", "Time of one batch of one stage (decode per request).",
                               ["stage"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("zscir_batch_size", "Requests per batch, by stage.", ["stage"],
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("zscir_queue_depth", "Payloads waiting per stage.", ["stage"],
                                 registry=self.registry)
        self.in_flight = Gauge("zscir_in_flight_requests", "Requests being answered now.", registry=self.registry)
        self.reloads = Counter("zscir_reloads", "Successful /admin/reload swaps.", registry=self.registry)

    def on_batch(self, stage: str, size: int, seconds: float) -> None:
        self.batch_size.labels(stage).observe(size)
        self.stage.labels(stage).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
