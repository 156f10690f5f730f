"""The launcher: the embedded one-machine stack and the ``modelops`` command line. The top layer:
it imports the packages below it, and nothing below imports it.

- :mod:`modelops.cli`: ``modelops up | gateway | sync | status | promote | rollback | diff | schema |
  register | train-demo | reset``, and ``bench`` where the ``benchmarks`` package is installed
  (the gateway and sync images leave it out).
- :mod:`modelops.settings`: the stack's ports and folders (``MODELOPS_STACK_*``; the old
  ``MODELOPS_<NAME>`` names still work, with a deprecation warning).
- :mod:`modelops.stack`: starts and supervises MLflow, Triton, the sync controller and the gateway,
  with :mod:`servers.tritonserver` (the real ``tritonserver`` from the ``nvidia-pytriton`` wheel)
  and :mod:`servers.processes` (child processes: start, health, stop with their whole group).
- :mod:`modelops.status`: what ``modelops status`` shows, per model and alias.
- :mod:`modelops.demo`: trains and registers the demo model.

The other top-level packages: ``modelspec`` (on-disk format shared by registry and gateway),
``tritonio`` (talking to Triton), ``servers`` (processes, embedded Triton), ``registry`` (train,
export, register), ``deployer`` (sync), ``gateway`` (FastAPI), ``benchmarks`` (load tests).
"""
