"""One way to talk to Triton: KServe v2 over HTTP/1.1 with the binary tensor extension, and its clients.

- :mod:`tritonio.codec`: infer request bodies out, infer responses in (every Triton datatype,
  BYTES included); the one codec of the project (why our own: the figures in its docstring).
- :mod:`tritonio.http1`: HTTP/1.1 framing for every raw-socket client: request bytes, response
  heads, bodies by length, chunked or to the end, from an ``asyncio.StreamReader``.
- :mod:`tritonio.errors`: unavailable, deadline exceeded, bad response, refused (with the one
  :func:`~tritonio.errors.classify` of refusals into not found / not ready / failed).
- :mod:`tritonio.aio`: :class:`~tritonio.aio.TritonHttpClient`, the async keep-alive connection
  pool of the request path (the gateway's, through :mod:`gateway.upstream`).
- :mod:`tritonio.grpc`: :class:`~tritonio.grpc.TritonGrpcClient`, the same calls over
  ``tritonclient.grpc.aio`` (the only module here that needs tritonclient).
- :mod:`tritonio.blocking`: :class:`~tritonio.blocking.BlockingTritonClient` on ``http.client``:
  readiness, model loading, repository index, inference; for control traffic and checks.

It imports no other package of this project, only numpy, the standard library and orjson when
it is importable (:mod:`~tritonio.http1` and :mod:`~tritonio.errors`: the standard library
alone), so it runs on a bare GPU host without pydantic or tritonclient
(tests/unit/test_tritonio_codec.py checks). Submodules are imported on demand, never here.
"""
