"""``GET /metrics`` (Prometheus text format) and the per-request counters behind it."""

from __future__ import annotations

import time

from flask import Flask, Response, current_app, g, request
from flask.views import MethodView
from flask_smorest import Blueprint

blp = Blueprint("metrics", __name__, description="Monitoring")


def register_request_metrics(app: Flask) -> None:
    @app.before_request
    def _start_timer():
        g.asr_started = time.perf_counter()

    @app.after_request
    def _count(response):
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics = app.extensions["asr_metrics"]
        metrics.requests.labels(route, request.method, str(response.status_code)).inc()
        if "asr_started" in g:
            metrics.latency.labels(route).observe(time.perf_counter() - g.asr_started)
        return response


@blp.route("/metrics")
class Metrics(MethodView):
    @blp.response(200, description="Prometheus text format.", content_type="text/plain")
    def get(self):
        """Prometheus metrics: requests, audio seconds, realtime factor, queue depth and wait, batch sizes."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        body = generate_latest(current_app.extensions["asr_metrics_registry"])
        return Response(body, mimetype=CONTENT_TYPE_LATEST.split(";")[0], headers={"Content-Type": CONTENT_TYPE_LATEST})
