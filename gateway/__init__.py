"""The FastAPI gateway: the stable ``POST /predict`` contract in front of Triton.

- :mod:`gateway.app`: ``create_app(settings)``, :class:`~gateway.app.Gateway` and the routes
  (predict, feedback, models, health, metrics, admin traffic policy).
- :mod:`gateway.contract`: request validation against the served version's feature schema,
  and the OpenAPI description built from it.
- :mod:`gateway.transport`: content type, body limits, JSON parsing, request ids, bearer keys.
- :mod:`gateway.serving`: which version answers (follows ``routing.json`` of each model) and the
  documents of each served version; no path leaves the model repository.
- :mod:`gateway.policy`: canary share and shadow switch per model (shared JSON file).
- :mod:`gateway.upstream`: the door to Triton: the :mod:`tritonio` client it makes (HTTP or
  gRPC) and the one mapping of Triton's failures onto the gateway's errors.
- :mod:`gateway.errors`: one error base, one JSON error shape.
- :mod:`gateway.metrics`: Prometheus metrics (multiprocess-aware).
- :mod:`gateway.drift`: rolling windows and PSI against the training profile.
- :mod:`gateway.feedback`: delayed outcomes joined to predictions (SQLite), live quality.
- :mod:`gateway.audit`: the rotating JSONL audit log; :mod:`gateway.background` the writer thread
  both of these use to stay off the request path.
- :mod:`gateway.docs`: ``python -m gateway.docs`` writes ``docs/contract.md`` from a schema.
- :mod:`gateway.testing`: a synthetic repository and a fake inference client for unit tests.

The gateway never imports torch, mlflow or the registry.
"""
