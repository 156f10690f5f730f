"""Train-to-registry: log a run to MLflow, export and check ONNX, register the version.

A version is registered only after its ONNX export passed the parity check; the run holds
the serving bundle (``serving/``: model, schema, profile, reference, manifest) that the
sync controller copies into the Triton model repository.
"""

from __future__ import annotations

import logging
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from deployer.settings import RegistrySettings
from modelspec import Manifest, ModelSchema
from modelspec.bundle import MODEL_FILE, TORCH_MODEL_FILE, write_bundle_documents
from modelspec.tags import BUNDLE_ARTIFACT_PATH, MANAGED_TAG, TAG_PREFIX
from registry.export import export_onnx, export_torchscript
from registry.profiling import build_profile
from registry.tabular import TrainingResult, encode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegisteredVersion:
    """A version that is now in the MLflow registry."""

    name: str
    version: int
    run_id: str
    metrics: dict[str, float]
    parity_max_abs_error: float


def git_commit(cwd: Path | None = None) -> str:
    """The current git commit (``+dirty`` when the tree has changes), or ``unknown`` outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}+dirty" if dirty else sha


def register_trained(
    settings: RegistrySettings,
    schema: ModelSchema,
    frame: pd.DataFrame,
    target: np.ndarray,
    result: TrainingResult,
    *,
    data_hash: str,
    data_source: str,
    description: str = "",
    progress: Callable[[str], None] | None = None,
) -> RegisteredVersion:
    """Log ``result`` as an MLflow run, export and check ONNX, and register a new version.

    Raises:
        ParityError: the ONNX export does not match the module; nothing is registered and the
            run is marked failed.
    """
    import mlflow
    import onnx
    import torch
    from mlflow import MlflowClient

    say = progress or (lambda _msg: None)
    if len(schema.outputs) != 1:
        raise ValueError(f"a tabular regressor has exactly one output; the schema lists {len(schema.outputs)}")
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_experiment(f"{settings.experiment_prefix}{schema.model_name}")
    client = MlflowClient(settings.tracking_uri)
    commit = git_commit(Path(__file__).resolve().parent)

    numeric, categorical = encode(frame, schema)
    test_idx = result.test_index
    with mlflow.start_run(run_name=f"{schema.model_name}-train") as run, tempfile.TemporaryDirectory() as tmp:
        run_id = run.info.run_id
        mlflow.log_params(result.params)
        mlflow.log_metrics(result.metrics)
        mlflow.set_tags(
            {
                "modelops.data_hash": data_hash,
                "modelops.data_source": data_source,
                "modelops.git_commit": commit,
                "mlflow.source.git.commit": commit.removesuffix("+dirty"),
            }
        )
        bundle = Path(tmp) / BUNDLE_ARTIFACT_PATH
        say("exporting to ONNX and checking parity")
        try:
            exported = export_onnx(result.module, schema, numeric[test_idx], categorical[test_idx], bundle / MODEL_FILE)
        except Exception:
            mlflow.set_tag("modelops.registration", "blocked: ONNX parity/export failed")
            mlflow.end_run(status="FAILED")
            raise
        mlflow.log_metric("parity_max_abs_error", exported.max_abs_error)
        # The TorchScript twin runs on the GPU when onnxruntime has no CUDA provider (issue 7).
        try:
            scripted = export_torchscript(
                result.module, numeric[test_idx], categorical[test_idx], bundle / TORCH_MODEL_FILE
            )
            mlflow.log_metric("torchscript_parity_max_abs_error", scripted.max_abs_error)
        except Exception as exc:  # optional artifact: the ONNX file is what is served by default
            (bundle / TORCH_MODEL_FILE).unlink(missing_ok=True)
            log.warning(
                "no TorchScript artifact for %s (GPU hosts without onnxruntime-gpu will use the CPU): %s",
                schema.model_name,
                exc,
            )

        with torch.no_grad():
            train_pred = result.module(
                torch.from_numpy(numeric[result.train_index]),
                torch.from_numpy(categorical[result.train_index]),
            ).numpy()
        profile = build_profile(frame.iloc[result.train_index], schema, train_pred)
        manifest = Manifest(
            model_name=schema.model_name,
            run_id=run_id,
            data_hash=data_hash,
            git_commit=commit,
            parity_max_abs_error=exported.max_abs_error,
            metrics=result.metrics,
            params=result.params,
        )
        write_bundle_documents(bundle, schema, profile, exported.reference, manifest)
        mlflow.log_artifacts(str(bundle), BUNDLE_ARTIFACT_PATH)
        mlflow.log_dict(schema.model_dump(mode="json"), "feature_schema.json")

        say("registering the version in MLflow")
        info = mlflow.onnx.log_model(
            onnx.load(str(bundle / MODEL_FILE)),
            name="model",
            registered_model_name=schema.model_name,
            save_as_external_data=False,
        )
    version = int(info.registered_model_version)
    for key, value in {
        "run_id": run_id,
        "data_hash": data_hash,
        "git_commit": commit,
        "parity_max_abs_error": f"{exported.max_abs_error:.3g}",
        "quality_metric": schema.quality_metric.name,
        schema.quality_metric.name: f"{result.metrics[schema.quality_metric.name]:.6g}",
        "bundle": f"runs:/{run_id}/{BUNDLE_ARTIFACT_PATH}",
    }.items():
        client.set_model_version_tag(schema.model_name, str(version), f"{TAG_PREFIX}{key}", value)
    client.set_registered_model_tag(schema.model_name, MANAGED_TAG, "true")
    if description:
        client.update_registered_model(schema.model_name, description=description)
    log.info("registered %s version %d (run %s)", schema.model_name, version, run_id)
    return RegisteredVersion(
        name=schema.model_name,
        version=version,
        run_id=run_id,
        metrics=result.metrics,
        parity_max_abs_error=exported.max_abs_error,
    )
