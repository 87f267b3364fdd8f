"""gunicorn settings: one gevent worker per GPU, many connections each.

Run: ``gunicorn -c gunicorn.conf.py wsgi:app``. HOST/PORT and the rest come from the
same Settings object the app uses (see README).
"""

import logging

from app.logs import logconfig_dict as _logconfig_dict
from app.settings import Settings

_settings = Settings()

bind = _settings.bind
# One process drives one GPU (or the CPU); concurrency comes from gevent, batching from the engine.
workers = 1
worker_class = "gevent"
worker_connections = _settings.gevent_connections
# The model loads in a native thread after the worker boots; heartbeats keep flowing meanwhile.
timeout = 120
graceful_timeout = 60
keepalive = 5
accesslog = "-"
errorlog = "-"
loglevel = "info"
# One formatter (LOG_FORMAT: json | text) for gunicorn's error and access logs and the app's loggers.
logconfig_dict = _logconfig_dict(_settings.log_format)
forwarded_allow_ips = "127.0.0.1"


def post_worker_init(worker):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    worker.wsgi.extensions["asr_engine"].start()
