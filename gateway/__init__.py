"""The FastAPI gateway: the stable ``POST /predict`` contract in front of Triton.

Where a request goes: the transport (:mod:`gateway.app`) takes it, the data plane
(:mod:`gateway.dataplane`) answers it, :mod:`gateway.upstream` reaches Triton.

- :mod:`gateway.app`: the transport. ``create_app(settings, client_factory)``, the routes, the
  exception handlers, SIGTERM draining, and :class:`~gateway.app.GatewayApp`, whose ASGI entry
  point serves the two predict routes before FastAPI routing (the hot path).
- :mod:`gateway.dataplane`: :class:`~gateway.dataplane.Gateway`, the state the routes share
  (start, drain, stop, routing refresh, readiness) and predict and feedback without HTTP: choice
  of version (champion, canary, shadow), validation, inference, drift, stored predictions, answer.
- :mod:`gateway.inference`: one validated batch through Triton, in chunks of ``max_batch_size``.
- :mod:`gateway.shadow`: requests the champion answered, mirrored to the challenger.
- :mod:`gateway.wire`: the request/response models of ``/openapi.json`` and the documented errors.
- :mod:`gateway.contract`: request validation against the served version's feature schema,
  and the OpenAPI description built from it.
- :mod:`gateway.transport`: content type, body limits, JSON parsing, request ids, bearer keys.
- :mod:`gateway.serving`: which version answers (follows ``routing.json`` of each model) and the
  documents of each served version (:class:`~gateway.serving.ServedVersion`); no path leaves the
  model repository.
- :mod:`gateway.policy`: canary share and shadow switch per model (shared JSON file).
- :mod:`gateway.upstream`: the gateway's only door to Triton: the
  :class:`~gateway.upstream.InferenceClient` protocol, :func:`~gateway.upstream.make_client` (the
  :mod:`tritonio` client, HTTP or gRPC) and the one mapping of Triton's failures onto the
  gateway's errors.
- :mod:`gateway.errors`: one error base, and :func:`~gateway.errors.error_body`, the one place
  the JSON error shape is built (it never echoes the request).
- :mod:`gateway.metrics`: Prometheus metrics (multiprocess-aware), and the families computed at
  scrape time (traffic policy, live and trained quality).
- :mod:`gateway.drift`: rolling windows and PSI against the training profile.
- :mod:`gateway.feedback`: delayed outcomes joined to predictions (SQLite), live quality.
- :mod:`gateway.audit`: the rotating JSONL audit log; :mod:`gateway.background` the writer thread
  both of these use to stay off the request path.
- :mod:`gateway.settings`: ``MODELOPS_GATEWAY_*`` settings, each with its description.
- :mod:`gateway.docs`: ``python -m gateway.docs`` writes ``docs/contract.md`` from a schema.
- :mod:`gateway.main`: the uvicorn factory (``uvicorn --factory gateway.main:app_from_environment``).
- :mod:`gateway.testing`: a synthetic repository and a fake inference client for unit tests.

The gateway never imports torch, mlflow, the registry or the deployer.
"""
