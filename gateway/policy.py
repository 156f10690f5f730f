"""Traffic policy per model: which share of /predict goes to the challenger (canary) and whether
requests are mirrored to it (shadow).

The policy lives in one JSON file (``traffic_policy_path``)::

    {"models": {"solar_ghi": {"canary_share": 0.1, "shadow": true}}}

Every worker re-reads it when its modification time changes (with ``routing.json``), so a change
made through ``PUT /admin/models/{name}/traffic`` on one worker, or by editing the file, reaches
all of them within ``routing_poll_s``. Without a path the policy is kept in memory: then the
admin API changes only the worker that answered it. A model without an entry gets no canary and
no shadow. The policy only acts while the model has a challenger.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.serving import valid_model_name
from modelspec.bundle import write_atomic

log = logging.getLogger(__name__)


class TrafficPolicy(BaseModel):
    """What happens to one model's traffic besides the champion answering."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    canary_share: float = Field(
        0.0, ge=0.0, le=1.0, description="Share of predict requests the challenger answers, 0..1."
    )
    shadow: bool = Field(False, description="Mirror requests answered by the champion to the challenger.")


class PolicyDocument(BaseModel):
    """The policy file."""

    model_config = ConfigDict(extra="forbid")

    models: dict[str, TrafficPolicy] = {}


class PolicyStore:
    """The traffic policies of every model, from a shared file or kept in memory."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._mtime: int | None = None
        self._doc = PolicyDocument()
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Re-read the file when it changed; keep the last good policy when it is unreadable."""
        if self.path is None:
            return
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            if self._mtime is not None:
                log.info("traffic policy %s removed: no canary, no shadow", self.path)
            self._mtime, self._doc = None, PolicyDocument()
            return
        except OSError as exc:
            log.warning("cannot stat traffic policy %s: %s", self.path, exc)
            return
        if mtime == self._mtime:
            return
        try:
            doc = PolicyDocument.model_validate_json(self.path.read_bytes())
        except (OSError, ValidationError, ValueError) as exc:
            log.warning("cannot read traffic policy %s (keeping the last good one): %s", self.path, exc)
            return
        bad = [name for name in doc.models if not valid_model_name(name)]
        if bad:
            log.warning("traffic policy %s names invalid models %s; ignoring them", self.path, bad)
            doc = PolicyDocument(models={k: v for k, v in doc.models.items() if k not in bad})
        if doc != self._doc:
            log.info("traffic policy: %s", {k: v.model_dump() for k, v in doc.models.items()})
        self._mtime, self._doc = mtime, doc

    def get(self, model: str) -> TrafficPolicy:
        """Policy of ``model`` (the default policy when it has none)."""
        return self._doc.models.get(model, _DEFAULT)

    def all(self) -> dict[str, TrafficPolicy]:
        """Every explicit policy, by model."""
        return dict(self._doc.models)

    def set(self, model: str, policy: TrafficPolicy) -> None:
        """Replace the policy of ``model``; written atomically to the file when there is one."""
        with self._lock:
            self.refresh()
            doc = PolicyDocument(models={**self._doc.models, model: policy})
            if self.path is not None:
                write_atomic(self.path, doc.model_dump_json(indent=2).encode())
                self._mtime = self.path.stat().st_mtime_ns
            self._doc = doc
        log.info("traffic policy of %s set to %s", model, policy.model_dump())


_DEFAULT = TrafficPolicy()
