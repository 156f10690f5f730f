"""Build the model repository of the GPU check from the demo model, with the registry's own code.

The demo model (NREL TMY3 solar irradiance, :mod:`registry.demo_data`) is trained, exported to
ONNX and to TorchScript (both parity-checked by :mod:`registry.export`), and written as version
1 of several models that differ only in how Triton serves them (:class:`Variant`), through
:func:`modelspec.repository.render_config`, ``write_config`` and ``materialize_version``: the
same path the sync controller takes. No MLflow server is involved.

The output folder holds ``repository/`` (what Triton serves) and ``plan.json`` (the variants and
how the artifacts were made), and it is relocatable: build it where the registry's packages are
installed, copy it to a bare GPU host and run ``gpu_check.py run`` there.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import tempfile
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

PLAN_FILE = "plan.json"
REPOSITORY_DIR = "repository"
VERSION = 1

Role = Literal["batched", "unbatched", "compare", "scaling"]


@dataclass(frozen=True)
class Variant:
    """One served model of the check: the demo model's version 1 under one serving setup."""

    name: str
    role: Role
    dynamic_batching: bool
    gpu: bool
    instances: int
    engine: Literal["auto", "onnxruntime", "torch"]
    ort_threads: int
    max_batch_size: int
    max_queue_delay_us: int


def plan_variants(
    base_name: str, device: Literal["cpu", "gpu"], instances: int, max_batch_size: int, max_queue_delay_us: int
) -> list[Variant]:
    """The served models for ``device``.

    ``batched`` and ``unbatched`` differ only in dynamic batching. ``compare`` is the other
    engine on CPU instances: on a GPU host onnxruntime on the CPU (the baseline the GPU must
    beat), on a CPU host the TorchScript artifact on the CPU (so the torch + DLPack path of the
    backend is exercised without a GPU). ``scaling`` variants serve with 1 and 2 instances (those
    below ``instances``) to show what one backend instance, one Python process, can serve.
    """
    gpu = device == "gpu"
    common = {"max_batch_size": max_batch_size, "max_queue_delay_us": max_queue_delay_us}
    variants = [
        Variant(base_name, "batched", True, gpu, instances, "auto", 1, **common),
        Variant(f"{base_name}_nobatch", "unbatched", False, gpu, instances, "auto", 1, **common),
        Variant(
            f"{base_name}_ort_cpu" if gpu else f"{base_name}_torch_cpu",
            "compare",
            True,
            False,
            instances,
            "onnxruntime" if gpu else "torch",
            1,
            **common,
        ),
    ]
    for n in (1, 2):
        if n < instances:
            variants.append(Variant(f"{base_name}_{n}inst", "scaling", True, gpu, n, "auto", 1, **common))
    return variants


def build_repository(
    out_dir: Path,
    device: Literal["cpu", "gpu"],
    *,
    instances: int,
    max_batch_size: int,
    max_queue_delay_us: int | None,
    epochs: int,
) -> Path:
    """Train the demo model and write ``out_dir/repository`` and ``out_dir/plan.json``; return ``out_dir``.

    Args:
        out_dir: an empty or missing folder; replaced if it holds an earlier build.
        device: whether the served variants get ``KIND_GPU`` instances.
        instances: backend instances per variant (one Python process each).
        max_batch_size: Triton's ``max_batch_size`` (rows) for every variant.
        max_queue_delay_us: the dynamic batcher's delay; None keeps the project default.
        epochs: training epochs (few are enough to check serving; the default model uses 60).
    """
    import torch

    from modelspec.bundle import MODEL_FILE, TORCH_MODEL_FILE, Manifest, write_bundle_documents
    from modelspec.repository import ServingOptions, materialize_version, render_config, write_config
    from registry.demo_data import demo_schema, load_demo_dataset
    from registry.export import export_onnx, export_torchscript
    from registry.profiling import build_profile
    from registry.register import git_commit
    from registry.tabular import encode, train_regressor

    delay = ServingOptions().max_queue_delay_us if max_queue_delay_us is None else max_queue_delay_us
    data = load_demo_dataset()
    schema = demo_schema(data.frame)
    result = train_regressor(data.frame, data.target, schema, epochs=epochs)
    numeric, categorical = encode(data.frame, schema)
    test = result.test_index
    if out_dir.exists():
        shutil.rmtree(out_dir)
    repository = out_dir / REPOSITORY_DIR
    repository.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp)
        onnx_export = export_onnx(result.module, schema, numeric[test], categorical[test], bundle / MODEL_FILE)
        torch_export = export_torchscript(result.module, numeric[test], categorical[test], bundle / TORCH_MODEL_FILE)
        with torch.no_grad():
            train_pred = result.module(
                torch.from_numpy(numeric[result.train_index]), torch.from_numpy(categorical[result.train_index])
            ).numpy()
        profile = build_profile(data.frame.iloc[result.train_index], schema, train_pred)
        manifest = Manifest(
            model_name=schema.model_name,
            run_id=f"gpu-check-{uuid.uuid4().hex[:12]}",
            data_hash=data.data_hash,
            git_commit=git_commit(Path(__file__).resolve().parent),
            parity_max_abs_error=onnx_export.max_abs_error,
            metrics=result.metrics,
            params=result.params,
        )
        write_bundle_documents(bundle, schema, profile, onnx_export.reference, manifest)
        variants = plan_variants(schema.model_name, device, instances, max_batch_size, delay)
        for v in variants:
            materialize_version(repository, v.name, VERSION, bundle)
            options = ServingOptions(
                target="embedded",
                gpu=v.gpu,
                dynamic_batching=v.dynamic_batching,
                max_batch_size=v.max_batch_size,
                max_queue_delay_us=v.max_queue_delay_us,
                instance_count=v.instances,
                ort_threads=v.ort_threads,
            )
            text = render_config(v.name, [schema], [VERSION], options)
            text += f'parameters: {{ key: "engine" value: {{ string_value: "{v.engine}" }} }}\n'
            write_config(repository, v.name, text)
    plan = {
        "device": device,
        "version": VERSION,
        "variants": [asdict(v) for v in variants],
        "model": {
            "name": schema.model_name,
            "data_source": data.source,
            "data_hash": data.data_hash,
            "epochs": epochs,
            "metrics": result.metrics,
            "onnx_parity_max_abs_error": onnx_export.max_abs_error,
            "torchscript_parity_max_abs_error": torch_export.max_abs_error,
            "exported_with": {"torch": torch.__version__, "python": platform.python_version()},
        },
    }
    (out_dir / PLAN_FILE).write_text(json.dumps(plan, indent=2))
    log.info("model repository for %s with %s at %s", device, [v.name for v in variants], repository)
    return out_dir


def read_plan(out_dir: Path) -> tuple[Path, dict[str, object], list[Variant]]:
    """The repository folder, the plan document and its variants of a prepared folder."""
    plan = json.loads((out_dir / PLAN_FILE).read_text())
    variants = [Variant(**v) for v in plan["variants"]]
    return out_dir / REPOSITORY_DIR, plan, variants
