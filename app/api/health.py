"""``GET /hc``: the readiness probe (Salad startup probe, Kubernetes readiness)."""

from __future__ import annotations

from flask import jsonify
from flask.views import MethodView
from flask_smorest import Blueprint

from app import __version__
from app.api import context
from app.api.schemas import HealthResponse

blp = Blueprint("health", __name__, description="Readiness")


@blp.route("/hc")
class Health(MethodView):
    @blp.response(200, HealthResponse, description="The model is loaded and warmed; ready for traffic.")
    @blp.alt_response(
        503,
        description='Still loading (`{"status": "loading"}`), failed to load (`failed`) or shutting down (`draining`).',
    )
    def get(self):
        """Readiness probe: 200 once the model is loaded and warmed, 503 before."""
        engine = context.engine()
        if context.drain().draining or not engine.ready:
            if context.drain().draining:
                status = "draining"  # SIGTERM: in-flight work finishes, new work goes elsewhere
            else:
                status = engine.state.value if engine.state.value != "idle" else "loading"
            response = jsonify({"status": status})
            response.status_code = 503
            response.headers["Retry-After"] = "5"
            return response
        info = engine.info
        return {
            "status": "ok",
            "version": __version__,
            "model_id": info["model_id"],
            "device": info["device_name"],
        }
