"""The launcher: the embedded one-machine stack and the ``modelops`` command line.

- :mod:`modelops.cli`: ``modelops up | gateway | sync | status | promote | rollback | train-demo | reset``.
- :mod:`modelops.stack`: starts and supervises MLflow, Triton, the sync controller and the gateway.
- :mod:`servers.tritonserver`: runs the real ``tritonserver`` from the ``nvidia-pytriton`` wheel.
- :mod:`servers.processes`: child processes (start, health, stop with their whole group).

The other top-level packages: ``modelspec`` (on-disk format shared by registry and gateway),
``registry`` (train, export, register, sync), ``gateway`` (FastAPI), ``benchmarks`` (load tests).
"""
