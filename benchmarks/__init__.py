"""Load tests as release gates, and comparisons of serving paths (``modelops bench``).

- :mod:`benchmarks.cli`: the ``bench`` sub-command (``add_bench_parser``; where the stack's
  servers are, :class:`~benchmarks.cli.StackDefaults`, comes from the launcher or from the
  ``MODELOPS_STACK_*`` variables).
- :mod:`benchmarks.gate`: one gated run of the gateway's ``/predict`` against a budgets file.
- :mod:`benchmarks.budget`: the budgets file (``budgets/<model>.yaml``) and its verdicts.
- ``--compare``: gateway, Triton directly, Triton without dynamic batching and
  ``mlflow models serve``, side by side, as ratios:

  - :mod:`benchmarks.compare`: the orchestration (start each variant, measure in rounds, medians);
  - :mod:`benchmarks.compare_results`: what it measured (options, load steps, variants, verdicts);
  - :mod:`benchmarks.compare_agreement`: the same records through every variant, same answers?
  - :mod:`benchmarks.compare_targets`: the targets file (``targets/compare.yaml``) and its verdicts;
  - :mod:`benchmarks.compare_report`: terminal, Markdown, HTML and JSON reports.
- :mod:`benchmarks.payloads`: records generated from the served schema, encoded per target (the
  Triton bodies by :mod:`tritonio.codec`).
- :mod:`benchmarks.loadrun`: runs the load generator as its own process: Locust
  (:mod:`benchmarks.locustfile`), or :mod:`benchmarks.asyncload` (``--load-engine asyncio``, raw
  keep-alive HTTP/1.1 on asyncio framed by :mod:`tritonio.http1`, a fraction of Locust's CPU per
  request).
- :mod:`benchmarks.stats`: exact percentiles, per-second series, load-generator saturation.
- :mod:`benchmarks.report`: JSON summary, verdict table, HTML report with plots.
- :mod:`benchmarks.recording`: the result on the MLflow model version (tags, metrics, artifacts).
- :mod:`benchmarks.peers`: the temporary Triton and ``mlflow models serve`` a comparison starts.
- ``gpu_check.py`` and :mod:`benchmarks.gpu`: the GPU check of the embedded Triton (docs/gpu.md).
- :mod:`benchmarks.codec_bench`: ``python -m benchmarks.codec_bench``, tritonclient's KServe v2
  helpers against :mod:`tritonio.codec` (the figures behind keeping a codec of our own).

The driver talks HTTP to what it measures and never imports a load generator: Locust, or the
asyncio engine, runs as its own process (importing Locust next to torch or MLflow crashed, see
GROUND.md). Nothing here imports the launcher (``modelops``), which registers ``bench`` only
where this package is installed.
"""
