"""ASR API: a Whisper speech-to-text server (Flask + flask-smorest, gunicorn/gevent, transformers)."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from flask import Flask

    from app.inference.engine import Engine
    from app.settings import Settings


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> Flask:
    """Build the WSGI app. Cheap: the model is loaded later by ``engine.start()``."""
    from flask import Flask
    from flask_smorest import Api

    from app.api import asr, auth, health, metrics, openai_compat, request_id
    from app.api.errors import register_error_handlers
    from app.drain import Drain
    from app.inference.engine import Engine
    from app.metrics import build_registry
    from app.settings import Settings

    settings = settings or Settings()
    engine = engine or Engine(settings)
    app = Flask(__name__)
    app.config.update(
        API_TITLE="ASR API",
        API_VERSION=__version__,
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        # Swagger UI's assets are served by this app (swagger-ui-bundle), so /docs works offline.
        OPENAPI_SWAGGER_UI_URL="/docs/assets/",
        MAX_CONTENT_LENGTH=settings.max_upload_bytes + 1024 * 1024,  # multipart overhead
        JSON_SORT_KEYS=False,
    )
    app.extensions["asr_settings"] = settings
    app.extensions["asr_engine"] = engine
    app.extensions["asr_drain"] = drain = Drain()
    app.wsgi_app = drain.wrap(app.wsgi_app)  # type: ignore[method-assign]  # counts in-flight requests
    app.extensions["asr_metrics_registry"], app.extensions["asr_metrics"] = build_registry(engine)
    request_id.register_request_id(app)  # first: every later hook, error and log line has the id
    auth.register_auth(app, settings)
    api = Api(app, spec_kwargs=auth.spec_kwargs(settings))
    for module in (health, asr, openai_compat, metrics):
        api.register_blueprint(module.blp)
    register_error_handlers(app)
    metrics.register_request_metrics(app)
    _serve_swagger_assets(app)
    return app


def _serve_swagger_assets(app: Flask) -> None:
    from flask import send_from_directory
    from swagger_ui_bundle import swagger_ui_path

    @app.get("/docs/assets/<path:filename>")
    def swagger_asset(filename: str):
        return send_from_directory(swagger_ui_path, filename, max_age=86400)
