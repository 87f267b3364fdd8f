"""WSGI entry point for gunicorn: ``gunicorn -c gunicorn.conf.py wsgi:app``.

Building the app is cheap; gunicorn.conf.py's ``post_worker_init`` starts loading the
model in each worker, so ``/hc`` answers 503 while it loads.
"""

from app import create_app

app = create_app()
