"""Deployment: what moves a registered version into every Triton and routes the gateway to it.

- :mod:`deployer.sync`: the sync controller (MLflow aliases -> model repository -> every Triton
  replica -> ``routing.json``): gathers each pass's inputs, applies its plan step by step, and
  its metrics.
- :mod:`deployer.plan`: the decision of one pass, without I/O: each version's bundle read once
  (``VersionBundle``), the promotion gates, what to keep loaded, the config, what to smoke-test
  and the ``routing.json`` to write (``SyncPlan``).
- :mod:`deployer.outcome`: what a pass did, one ``StepRecord`` per step, version and Triton
  replica (``SyncOutcome``).
- :mod:`deployer.triton_control`: load, readiness and smoke inference on one Triton replica.
- :mod:`deployer.settings`: ``MODELOPS_REGISTRY_*`` settings of MLflow, the repository and Triton.

The repository format it writes is :mod:`modelspec.repository`. The deployer never imports torch
or the training side (:mod:`registry`): a sync controller image needs neither
(tests/unit/test_deployer_imports.py holds it to that).
"""
