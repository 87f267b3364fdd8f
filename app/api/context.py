"""Accessors for what ``create_app`` put on the app: the engine, the settings, the metrics."""

from __future__ import annotations

from flask import current_app

from app.drain import Drain
from app.inference.engine import Engine
from app.metrics import HttpMetrics
from app.settings import Settings


def engine() -> Engine:
    return current_app.extensions["asr_engine"]


def drain() -> Drain:
    return current_app.extensions["asr_drain"]


def settings() -> Settings:
    return current_app.extensions["asr_settings"]


def metrics() -> HttpMetrics:
    return current_app.extensions["asr_metrics"]
