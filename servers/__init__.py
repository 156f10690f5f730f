"""Starting and supervising the servers that a stack or a benchmark runs, below both.

- :mod:`servers.processes`: child processes (start, health check, stop with their whole group),
  free and busy ports.
- :mod:`servers.tritonserver`: the real ``tritonserver`` that ships in the ``nvidia-pytriton``
  wheel, run without Docker (backend directory, environment, command line).

Used by the launcher (:mod:`modelops.stack`) and by the benchmarks (:mod:`benchmarks.peers`, the
GPU check); imports neither of them.
"""
