"""gunicorn settings: one gevent worker per GPU, many connections each.

Run: ``gunicorn -c gunicorn.conf.py wsgi:app``. HOST/PORT and the rest come from the
same Settings object the app uses (see README).
"""

import math

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
# SIGTERM -> the worker drains (app/drain.py) within DRAIN_PRESTOP_S + DRAIN_TIMEOUT_S, which the
# settings keep below this; the master kills a worker still there after it.
graceful_timeout = math.ceil(_settings.graceful_timeout_s)
keepalive = 5
accesslog = "-"
errorlog = "-"
loglevel = "info"
# One formatter (LOG_FORMAT: json | text) for gunicorn's error and access logs and the app's loggers.
logconfig_dict = _logconfig_dict(_settings.log_format)
forwarded_allow_ips = "127.0.0.1"


def post_worker_init(worker):
    from app.drain import install_sigterm_drain

    install_sigterm_drain(
        worker,
        worker.wsgi.extensions["asr_drain"],
        prestop_s=_settings.drain_prestop_s,
        timeout_s=_settings.drain_timeout_s,
    )
    worker.wsgi.extensions["asr_engine"].start()


def worker_exit(server, worker):
    # Stops the engine and ends the process (os._exit): Python's own exit hung in gevent's hub
    # until the master's SIGKILL at graceful_timeout (see app/drain.py finish_worker).
    from app.drain import finish_worker

    app = getattr(worker, "wsgi", None)
    if app is not None and "asr_engine" in app.extensions:
        finish_worker(app.extensions["asr_drain"], app.extensions["asr_engine"])
