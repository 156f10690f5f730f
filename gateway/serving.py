"""Which version of which model answers: follows ``model_repository/<model>/routing.json``.

Only the sync controller writes ``routing.json``, after a version passed its smoke test in
Triton; the gateway re-reads it when it changes, so a promotion or a rollback reaches the
request path within ``routing_poll_s``; the same document records the options Triton's config
was rendered with (``max_batch_size``: where a large request is split). The schema, training
profile and manifest of each served version are read once (versions never change). File names
are those of :mod:`modelspec.layout`.

Paths are built only from names that match :data:`~modelspec.schema.NAME_PATTERN` and integer
versions, and every file read must resolve inside the repository: a model folder that is a
symlink out of it is ignored, so no request can reach a file outside the repository.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import ModelNotFound, ModelNotReady
from modelspec import Manifest, ModelSchema, NumericFeature, Routing, TrainingProfile
from modelspec.layout import MANIFEST_FILE, PROFILE_FILE, ROUTING_FILE, SCHEMA_FILE
from modelspec.schema import NAME_PATTERN

log = logging.getLogger(__name__)

_NAME = re.compile(NAME_PATTERN)


@dataclass(frozen=True)
class ServedVersion:
    """One served model version to call (behind an alias), with the schema its requests are validated against."""

    model: str
    version: int
    alias: str
    schema: ModelSchema
    run_id: str | None


def valid_model_name(name: str) -> bool:
    """Whether ``name`` can be a served model (lower snake case: safe in paths, URLs and labels)."""
    return bool(_NAME.fullmatch(name))


class ServedModels:
    """Cache of routing documents and per-version documents under a model repository."""

    def __init__(self, root: Path, range_policy_overrides: dict[str, str] | None = None) -> None:
        """Args:
        root: the model repository.
        range_policy_overrides: ``{"<model>.<feature>" | "<model>.*": "reject" | "flag"}``
            replacing the schema's out-of-range policy.
        """
        self.root = root
        self._real_root = root.resolve()
        self._overrides = range_policy_overrides or {}
        self._routing: dict[str, tuple[float, Routing]] = {}
        self._schemas: dict[tuple[str, int], ModelSchema] = {}
        self._profiles: dict[tuple[str, int], TrainingProfile | None] = {}
        self._manifests: dict[tuple[str, int], Manifest | None] = {}

    def _inside(self, path: Path) -> bool:
        try:
            return path.resolve().is_relative_to(self._real_root)
        except OSError:
            return False

    def refresh(self) -> None:
        """Re-read every ``routing.json`` whose modification time changed."""
        if not self.root.is_dir():
            return
        seen: set[str] = set()
        for path in self.root.glob(f"*/{ROUTING_FILE}"):
            name = path.parent.name
            if not valid_model_name(name) or not self._inside(path):
                log.warning("ignoring %s: not a model folder inside the repository", path.parent)
                continue
            seen.add(name)
            try:
                mtime = path.stat().st_mtime_ns
                cached = self._routing.get(name)
                if cached and cached[0] == mtime:
                    continue
                routing = Routing.model_validate_json(path.read_bytes())
            except (OSError, ValueError) as exc:
                log.warning("cannot read %s (keeping the last good routing): %s", path, exc)
                continue
            if cached is None or cached[1].champion != routing.champion or cached[1].challenger != routing.challenger:
                log.info("routing of %s: champion v%s, challenger v%s", name, routing.champion, routing.challenger)
            self._routing[name] = (mtime, routing)
        for gone in set(self._routing) - seen:
            log.info("model %s is no longer served", gone)
            del self._routing[gone]

    def models(self) -> dict[str, Routing]:
        """Routing of every served model."""
        return {name: r for name, (_m, r) in self._routing.items()}

    def routing(self, model: str) -> Routing:
        """Routing of ``model``; ModelNotFound when it is not served."""
        if not valid_model_name(model):
            raise ModelNotFound("no such model: model names are lower-case letters, digits and '_'", field="model")
        entry = self._routing.get(model)
        if entry is None:
            raise ModelNotFound(f"model {model!r} is not served; GET /models lists the served models", field="model")
        return entry[1]

    def _version_file(self, model: str, version: int, filename: str) -> Path:
        if not valid_model_name(model) or not isinstance(version, int) or version < 0:
            raise ModelNotFound("no such model version", field="model")
        path = self.root / model / str(version) / filename
        if not self._inside(path):
            raise ModelNotFound("no such model version", field="model")
        return path

    def schema(self, model: str, version: int) -> ModelSchema:
        """Schema of one served version (read once, versions never change), overrides applied."""
        key = (model, version)
        if key not in self._schemas:
            path = self._version_file(model, version, SCHEMA_FILE)
            try:
                schema = ModelSchema.model_validate_json(path.read_bytes())
            except (OSError, ValueError) as exc:
                raise ModelNotReady(
                    f"model {model!r} version {version} is not available yet; retry shortly",
                    headers={"Retry-After": "1"},
                ) from exc
            self._schemas[key] = self._apply_overrides(schema)
        return self._schemas[key]

    def _apply_overrides(self, schema: ModelSchema) -> ModelSchema:
        if not self._overrides:
            return schema
        features = []
        for f in schema.features:
            policy = self._overrides.get(f"{schema.model_name}.{f.name}") or self._overrides.get(
                f"{schema.model_name}.*"
            )
            if isinstance(f, NumericFeature) and policy is not None and policy != f.range_policy:
                f = f.model_copy(update={"range_policy": policy})
            features.append(f)
        return schema.model_copy(update={"features": features})

    def profile(self, model: str, version: int) -> TrainingProfile | None:
        """Training profile of a version (the drift baseline); None when it cannot be read."""
        key = (model, version)
        if key not in self._profiles:
            try:
                path = self._version_file(model, version, PROFILE_FILE)
                self._profiles[key] = TrainingProfile.model_validate_json(path.read_bytes())
            except (OSError, ValueError, ModelNotFound) as exc:
                log.warning("no training profile for %s v%d (no drift metrics): %s", model, version, exc)
                self._profiles[key] = None
        return self._profiles[key]

    def manifest(self, model: str, version: int) -> Manifest | None:
        """Lineage and trained metrics of a version; None when it cannot be read."""
        key = (model, version)
        if key not in self._manifests:
            try:
                path = self._version_file(model, version, MANIFEST_FILE)
                self._manifests[key] = Manifest.model_validate_json(path.read_bytes())
            except (OSError, ValueError, ModelNotFound) as exc:
                log.warning("no manifest for %s v%d: %s", model, version, exc)
                self._manifests[key] = None
        return self._manifests[key]

    def max_batch_size(self, model: str) -> int | None:
        """``max_batch_size`` of the config the model's versions are loaded with; None when unknown.

        Triton refuses a request with more rows than this, so larger requests are split. It is
        read from ``routing.json`` (:attr:`Routing.serving`, written by the sync controller with
        the config it loaded), so it changes with the routing, in the same document; a routing
        written before the options were recorded gives None: requests are not split.
        """
        entry = self._routing.get(model)
        serving = entry[1].serving if entry is not None else None
        return serving.max_batch_size if serving is not None and serving.max_batch_size > 0 else None

    def target(self, model: str, alias: str = "champion") -> ServedVersion:
        """The version of ``model`` behind ``alias``."""
        routing = self.routing(model)
        version = routing.champion if alias == "champion" else routing.challenger
        if version is None:
            raise ModelNotReady(f"model {model!r} has no {alias} yet; retry shortly", headers={"Retry-After": "1"})
        run_id = routing.champion_run_id if alias == "champion" else routing.challenger_run_id
        return ServedVersion(
            model=model, version=version, alias=alias, schema=self.schema(model, version), run_id=run_id
        )
