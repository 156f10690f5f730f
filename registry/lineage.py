"""Lineage: what changed between two versions of a model (``modelops diff``)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelspec import SCHEMA_FILE, ModelSchema, breaking_changes
from modelspec.tags import BUNDLE_ARTIFACT_PATH

if TYPE_CHECKING:
    from mlflow import MlflowClient


def _version_facts(client: MlflowClient, model: str, version: int) -> dict[str, Any]:
    mv = client.get_model_version(model, str(version))
    if not mv.run_id:
        raise ValueError(f"{model} version {version} has no MLflow run: no lineage to compare")
    run = client.get_run(mv.run_id)
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(mv.run_id, f"{BUNDLE_ARTIFACT_PATH}/{SCHEMA_FILE}", tmp)
        schema = ModelSchema.model_validate_json(Path(path).read_bytes())
    return {
        "version": version,
        "run_id": mv.run_id,
        "created": mv.creation_timestamp,
        "params": dict(run.data.params),
        "metrics": dict(run.data.metrics),
        "data_hash": run.data.tags.get("modelops.data_hash", ""),
        "git_commit": run.data.tags.get("modelops.git_commit", ""),
        "schema": schema,
        "aliases": list(mv.aliases or []),
    }


def diff_versions(client: MlflowClient, model: str, a: int, b: int) -> dict[str, Any]:
    """Explain what changed from version ``a`` to version ``b`` of ``model``."""
    old, new = _version_facts(client, model, a), _version_facts(client, model, b)

    def changed(key: str) -> dict[str, list[Any]]:
        keys = sorted(set(old[key]) | set(new[key]))
        return {k: [old[key].get(k), new[key].get(k)] for k in keys if old[key].get(k) != new[key].get(k)}

    old_schema: ModelSchema = old["schema"]
    new_schema: ModelSchema = new["schema"]
    old_fields = {f.name for f in old_schema.features}
    new_fields = {f.name for f in new_schema.features}
    return {
        "model": model,
        "versions": [a, b],
        "runs": [old["run_id"], new["run_id"]],
        "params": changed("params"),
        "metrics": changed("metrics"),
        "data_hash": [old["data_hash"], new["data_hash"]] if old["data_hash"] != new["data_hash"] else None,
        "git_commit": [old["git_commit"], new["git_commit"]] if old["git_commit"] != new["git_commit"] else None,
        "schema": {
            "added_fields": sorted(new_fields - old_fields),
            "removed_fields": sorted(old_fields - new_fields),
            "breaking_changes": breaking_changes(old_schema, new_schema),
            "identical": old_schema == new_schema,
        },
    }


def format_diff(diff: dict[str, Any]) -> str:
    """Human-readable form of :func:`diff_versions`."""
    a, b = diff["versions"]
    lines = [f"{diff['model']}: version {a} -> {b} (runs {diff['runs'][0]} -> {diff['runs'][1]})"]
    for section in ("params", "metrics"):
        entries = diff[section]
        lines.append(f"{section}: " + ("unchanged" if not entries else ""))
        for key, (x, y) in entries.items():
            shown = f"{x:.6g} -> {y:.6g}" if isinstance(x, float) and isinstance(y, float) else f"{x} -> {y}"
            lines.append(f"  {key}: {shown}")
    for key in ("data_hash", "git_commit"):
        lines.append(f"{key}: " + ("unchanged" if diff[key] is None else f"{diff[key][0]} -> {diff[key][1]}"))
    schema = diff["schema"]
    if schema["identical"]:
        lines.append("schema: identical")
    else:
        lines.append(f"schema: added {schema['added_fields']}, removed {schema['removed_fields']}")
        lines += [f"  breaking: {p}" for p in schema["breaking_changes"]] or ["  no breaking change"]
    return "\n".join(lines)


def diff_json(diff: dict[str, Any]) -> str:
    """JSON form of :func:`diff_versions`."""
    return json.dumps(diff, indent=2, default=str)
