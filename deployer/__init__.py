"""Deployment: what moves a registered version into every Triton and routes the gateway to it.

- :mod:`deployer.sync`: the sync controller (MLflow aliases -> model repository -> every Triton
  replica -> ``routing.json``), its promotion gates and metrics.
- :mod:`deployer.triton_control`: load, readiness and smoke inference on one Triton replica.
- :mod:`deployer.settings`: ``MODELOPS_REGISTRY_*`` settings of MLflow, the repository and Triton.

The repository format it writes is :mod:`modelspec.repository`. The deployer never imports torch
or the training side (:mod:`registry`): a sync controller image needs neither.
"""
