"""The training side: from a trained model to a registered, servable MLflow version (torch, mlflow).

- :mod:`registry.demo_data`: the demo data set (NREL TMY3 irradiance and weather, shipped in pvlib)
  and its feature schema.
- :mod:`registry.tabular`: a PyTorch regressor with its preprocessing inside the graph, trained on
  a frame encoded by :mod:`modelspec.tensors`.
- :mod:`registry.export`: ONNX (and TorchScript) export with the parity check that blocks a bad one.
- :mod:`registry.profiling`: the training profile of a version (the drift baseline).
- :mod:`registry.register`: one MLflow run per version (params, metrics, lineage, the serving
  bundle under ``serving/``), then the registered version, tagged for the sync controller.
- :mod:`registry.byo`: bring your own PyTorch module: schema inferred from a sample, registered alike.
- :mod:`registry.lineage`: what changed between two versions (``modelops diff``).

What happens after registration (gates, copy into the model repository, Triton, routing) is the
deployer's (:mod:`deployer`), which never imports this package; registration reads the same MLflow
settings (:mod:`deployer.settings`).
"""
