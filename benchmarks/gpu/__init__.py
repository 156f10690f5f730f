"""Helpers of ``benchmarks/gpu_check.py``, the self-contained GPU check of the embedded Triton.

- :mod:`benchmarks.gpu.loadgen`: a multi-process, closed-loop HTTP load generator (stdlib only).
- :mod:`benchmarks.gpu.server`: starts the bundled ``tritonserver``, loads models, reads the
  statistics and metrics APIs.
- :mod:`benchmarks.gpu.prepare`: trains the demo model and builds the model repository with the
  registry's own export and repository code (needs the ``registry`` extra).
- :mod:`benchmarks.gpu.report`: the result document, the targets and the markdown table.

Requests to Triton are encoded and sent with :mod:`tritonio` (codec, HTTP/1.1 framing, the
blocking client). Only :mod:`~benchmarks.gpu.prepare` imports the project's pydantic-based
packages; the rest needs numpy, the ``nvidia-pytriton`` wheel and the standard library, which is
what a bare GPU host has.
"""
