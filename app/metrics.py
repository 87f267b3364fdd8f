"""Prometheus metrics: request counters on the HTTP side, engine state read at scrape time.

Each app gets its own registry (tests build many apps). The engine and batcher know
nothing about Prometheus: :class:`EngineCollector` reads their plain stats when scraped.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from app.inference.batcher import WAIT_BUCKETS

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class EngineCollector(Collector):
    def __init__(self, engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator:
        engine = self.engine
        yield GaugeMetricFamily(
            "asr_ready", "1 once the model is loaded and warmed", value=1.0 if engine.ready else 0.0
        )
        load = getattr(engine, "load_seconds", None)
        if load is not None:
            yield GaugeMetricFamily("asr_model_load_seconds", "Time to load and warm the model", value=load)
        runner = getattr(engine, "runner", None)
        if runner is not None:
            yield CounterMetricFamily(
                "asr_window_redecodes",
                "Windows whose decoding stopped early and were decoded again from their last timestamp",
                value=runner.redecodes,
            )
            yield CounterMetricFamily(
                "asr_window_fallbacks",
                "Window decodes repeated at a temperature because the greedy text was a repetition loop",
                value=runner.fallbacks,
            )
        batcher = getattr(engine, "batcher", None)
        if batcher is None:
            return
        stats = batcher.stats
        yield GaugeMetricFamily("asr_queue_windows", "30 s windows waiting for the model", value=batcher.queue.pending)
        yield CounterMetricFamily("asr_batches", "Model batches run", value=stats.batches)
        yield CounterMetricFamily("asr_batch_windows", "Windows run in model batches", value=stats.chunks)
        yield CounterMetricFamily(
            "asr_multi_request_batches",
            "Batches holding windows of more than one request",
            value=stats.multi_request_batches,
        )
        yield CounterMetricFamily(
            "asr_model_busy_seconds", "Seconds the model thread spent on batches", value=stats.busy_seconds
        )
        buckets = [(str(bound), sum(n for size, n in stats.sizes.items() if size <= bound)) for bound in BATCH_BUCKETS]
        buckets.append(("+Inf", stats.batches))
        yield HistogramMetricFamily(
            "asr_batch_size", "Windows per model batch", buckets=buckets, sum_value=stats.chunks
        )
        waits = [(str(bound), sum(n for b, n in stats.waits.items() if b <= bound)) for bound in WAIT_BUCKETS]
        waits.append(("+Inf", stats.waited_windows))
        yield HistogramMetricFamily(
            "asr_queue_wait_seconds",
            "Time each 30 s window waited in the queue before its model batch started",
            buckets=waits,
            sum_value=stats.wait_seconds,
        )


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("asr_requests", "HTTP requests", ["route", "method", "status"], registry=registry)
        self.latency = Histogram(
            "asr_request_seconds",
            "Time to build the response (for ?stream=1: until the stream starts)",
            ["route"],
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=registry,
        )
        self.audio_received = Counter("asr_audio_received_seconds", "Seconds of audio decoded", registry=registry)
        self.audio_transcribed = Counter(
            "asr_audio_transcribed_seconds", "Seconds of audio transcribed", registry=registry
        )
        self.processing = Counter("asr_processing_seconds", "Seconds spent on /asr requests", registry=registry)
        self.realtime = Histogram(
            "asr_realtime_factor",
            "Audio seconds per processing second, per request",
            buckets=(0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
            registry=registry,
        )

    def transcribed(self, audio_seconds: float, elapsed: float) -> None:
        self.audio_transcribed.inc(audio_seconds)
        self.processing.inc(elapsed)
        if elapsed > 0:
            self.realtime.observe(audio_seconds / elapsed)


def build_registry(engine) -> tuple[CollectorRegistry, HttpMetrics]:
    registry = CollectorRegistry()
    registry.register(EngineCollector(engine))
    return registry, HttpMetrics(registry)
