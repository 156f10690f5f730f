"""``modelops status``: per model, alias -> version -> Triton state -> run -> data hash -> serving since."""

from __future__ import annotations

from typing import Any

from deployer.settings import RegistrySettings
from modelspec import Manifest, Routing


def collect_status(settings: RegistrySettings) -> list[dict[str, Any]]:
    """One row per (model, alias) from MLflow, the model repository and Triton."""
    from mlflow import MlflowClient

    from deployer.sync import managed_models
    from deployer.triton_control import TritonControl, TritonControlError
    from modelspec.tags import SYNC_STATUS_TAG

    client = MlflowClient(settings.tracking_uri)
    triton = TritonControl(settings.triton_endpoints()[0], timeout_s=5)
    rows: list[dict[str, Any]] = []
    models = managed_models(client)
    for model in models:
        rm = client.get_registered_model(model)
        routing = Routing.read(settings.model_repository / model) or Routing(model_name=model)
        try:
            ready = triton.ready_versions(model)
        except TritonControlError:
            ready = set()
        aliases = {a: int(v) for a, v in (rm.aliases or {}).items()}
        served = {
            "champion": routing.champion,
            "challenger": routing.challenger,
            "previous_champion": routing.previous_champion,
        }
        for alias in ("champion", "challenger", "previous_champion"):
            version = aliases.get(alias) if alias != "previous_champion" else routing.previous_champion
            if version is None and served[alias] is None:
                continue
            shown = version if version is not None else served[alias]
            mv = client.get_model_version(model, str(shown)) if shown else None
            tags = (mv.tags or {}) if mv else {}
            manifest_path = settings.model_repository / model / str(shown) / "manifest.json"
            manifest = Manifest.model_validate_json(manifest_path.read_bytes()) if manifest_path.exists() else None
            rows.append(
                {
                    "model": model,
                    "alias": alias,
                    "mlflow_version": version,
                    "served_version": served[alias],
                    "triton": "READY" if shown in ready else "not loaded",
                    "run_id": mv.run_id if mv else None,
                    "data_hash": (manifest.data_hash if manifest else tags.get("modelops.data_hash", ""))[:19],
                    "serving_since": routing.serving_since.get(alias, ""),
                    "sync_status": tags.get(SYNC_STATUS_TAG, ""),
                }
            )
    triton.close()
    return rows


def format_status(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table of ``rows``."""
    if not rows:
        return "no managed models yet: register one (`modelops train-demo`) and promote it"
    cols = [
        "model",
        "alias",
        "mlflow_version",
        "served_version",
        "triton",
        "run_id",
        "data_hash",
        "serving_since",
        "sync_status",
    ]
    widths = {c: max(len(c), *(len(str(r[c] if r[c] is not None else "-")) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    for r in rows:
        lines.append("  ".join(str(r[c] if r[c] is not None else "-").ljust(widths[c]) for c in cols))
    return "\n".join(lines)
