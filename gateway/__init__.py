"""The FastAPI gateway: the stable ``POST /predict`` contract in front of Triton.

- :mod:`gateway.app`: ``create_app(settings)`` and the routes (thin: parse, call, map).
- :mod:`gateway.contract`: request validation against the served version's feature schema,
  and the OpenAPI description built from it.
- :mod:`gateway.serving`: which version answers (follows ``routing.json`` of each model).
- :mod:`gateway.triton`: the only module that imports ``tritonclient``.
- :mod:`gateway.errors`: one error base, one JSON error shape.
- :mod:`gateway.metrics`: Prometheus metrics.

The gateway never imports torch, mlflow or the registry.
"""
