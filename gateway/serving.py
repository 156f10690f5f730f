"""Which version of which model answers: follows ``model_repository/<model>/routing.json``.

Only the sync controller writes ``routing.json``, after a version passed its smoke test in
Triton; the gateway re-reads it when it changes, so a promotion or a rollback reaches the
request path within ``routing_poll_s``. The schema of each served version is loaded once.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import ModelNotFound, ModelNotReady
from modelspec import ROUTING_FILE, SCHEMA_FILE, ModelSchema, Routing
from modelspec.schema import NAME_PATTERN

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """One model version to call, with the schema its requests are validated against."""

    model: str
    version: int
    alias: str
    schema: ModelSchema
    run_id: str | None


class ServedModels:
    """Cache of routing documents and schemas under a model repository."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._routing: dict[str, tuple[float, Routing]] = {}
        self._schemas: dict[tuple[str, int], ModelSchema] = {}

    def refresh(self) -> None:
        """Re-read every ``routing.json`` whose modification time changed."""
        if not self.root.is_dir():
            return
        for path in self.root.glob(f"*/{ROUTING_FILE}"):
            name = path.parent.name
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

    def models(self) -> dict[str, Routing]:
        """Routing of every served model."""
        return {name: r for name, (_m, r) in self._routing.items()}

    def routing(self, model: str) -> Routing:
        """Routing of ``model``; ModelNotFound when it is not served."""
        if not re.fullmatch(NAME_PATTERN, model):
            raise ModelNotFound("no such model: model names are lower-case letters, digits and '_'", field="model")
        entry = self._routing.get(model)
        if entry is None:
            raise ModelNotFound(f"model {model!r} is not served; GET /models lists the served models", field="model")
        return entry[1]

    def schema(self, model: str, version: int) -> ModelSchema:
        """Schema of one served version (read once, versions never change)."""
        key = (model, version)
        if key not in self._schemas:
            path = self.root / model / str(version) / SCHEMA_FILE
            try:
                self._schemas[key] = ModelSchema.model_validate_json(path.read_bytes())
            except (OSError, ValueError) as exc:
                raise ModelNotReady(
                    f"model {model!r} version {version} is not available yet; retry shortly",
                    headers={"Retry-After": "1"},
                ) from exc
        return self._schemas[key]

    def target(self, model: str, alias: str = "champion") -> Target:
        """The version of ``model`` behind ``alias``."""
        routing = self.routing(model)
        version = routing.champion if alias == "champion" else routing.challenger
        if version is None:
            raise ModelNotReady(f"model {model!r} has no {alias} yet; retry shortly", headers={"Retry-After": "1"})
        run_id = routing.champion_run_id if alias == "champion" else routing.challenger_run_id
        return Target(model=model, version=version, alias=alias, schema=self.schema(model, version), run_id=run_id)
