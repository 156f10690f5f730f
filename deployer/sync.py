"""The sync controller: reconcile MLflow aliases with what Triton serves.

For every managed model (registered model tag ``modelops.managed=true``) one pass:

1. reads the aliases ``champion`` and ``challenger`` from MLflow;
2. gates a new champion (schema must not break the live contract; quality metric not worse
   than the live champion's beyond the configured margin; a version tagged ``modelops.force``
   skips the gates);
3. copies every wanted version's bundle into ``model_repository/<model>/<N>/`` (atomic, never
   overwritten) and rewrites ``config.pbtxt`` so the loaded set is {champion, challenger,
   previous champion};
4. loads the model in every Triton replica (explicit mode; versions that stay keep serving);
5. runs a smoke inference on each new version and compares it with the outputs stored at
   export;
6. only then rewrites ``routing.json``, which the gateway follows.

A failure at any step leaves the old routing (and the old versions loaded) in place, and
says why: a log line, the version tag ``modelops.sync_status``, the metric
``modelops_sync_errors_total`` and ``modelops status``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge

from deployer.settings import RegistrySettings
from deployer.triton_control import TritonControl, TritonControlError
from modelspec import (
    MANIFEST_FILE,
    REFERENCE_FILE,
    SCHEMA_FILE,
    Manifest,
    ModelSchema,
    Reference,
    Routing,
    breaking_changes,
)
from modelspec.bundle import utc_now
from modelspec.repository import (
    check_model_name,
    is_complete,
    materialize_version,
    render_config,
    version_dir,
    write_config,
)
from modelspec.tags import (
    BUNDLE_ARTIFACT_PATH,
    FORCE_TAG,
    HISTORY_TAG,
    LOADTEST_STATUS_TAG,
    MANAGED_TAG,
    SYNC_STATUS_TAG,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"


class GateFailed(RuntimeError):
    """A version may not be served: the message says which gate and why."""


@dataclass
class SyncOutcome:
    """What one reconcile pass of one model did."""

    model: str
    changed: bool = False
    routing: Routing | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)


class SyncMetrics:
    """Prometheus metrics of the sync controller (own registry, so tests can build several)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.last_success = Gauge(
            "modelops_sync_last_success_timestamp_seconds",
            "Last successful reconcile",
            ["model"],
            registry=self.registry,
        )
        self.errors = Counter(
            "modelops_sync_errors", "Failed reconcile passes", ["model", "reason"], registry=self.registry
        )
        self.up = Gauge("modelops_sync_up", "1 when the last pass reached MLflow and Triton", registry=self.registry)


def managed_models(client: MlflowClient) -> list[str]:
    """Registered models tagged ``modelops.managed=true``, by name."""
    found = client.search_registered_models(filter_string=f"tags.`{MANAGED_TAG}` = 'true'")
    return sorted(m.name for m in found)


class SyncController:
    """Reconciles MLflow aliases of managed models with the Triton replicas."""

    def __init__(self, settings: RegistrySettings, metrics: SyncMetrics | None = None) -> None:
        # The controller retries whole passes with its own backoff; MLflow's default per-call
        # retries (minutes with an unreachable server) would stall every pass.
        for name, value in (
            ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1"),
            ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
            ("MLFLOW_HTTP_REQUEST_TIMEOUT", "10"),
        ):
            os.environ.setdefault(name, value)
        from mlflow import MlflowClient

        self.settings = settings
        self.root = settings.model_repository
        self.client = MlflowClient(settings.tracking_uri)
        self._tritons: dict[str, TritonControl] = {}
        self.metrics = metrics or SyncMetrics()
        self.options = settings.serving_options()
        self.healthy = False
        self._lock = threading.Lock()
        self._blocked: dict[tuple[str, str, int], str] = {}  # (model, alias, version) -> reason, logged once

    # -- discovery ---------------------------------------------------------------------------
    @property
    def tritons(self) -> list[TritonControl]:
        """A control client per Triton replica, re-resolved on every call (replicas come and go)."""
        endpoints = self.settings.triton_endpoints()
        if not endpoints:
            raise TritonControlError("no Triton replica resolved from MODELOPS_REGISTRY_TRITON_URLS")
        for gone in set(self._tritons) - set(endpoints):
            self._tritons.pop(gone).close()
        return [self._tritons.setdefault(e, TritonControl(e, self.settings.load_timeout_s)) for e in endpoints]

    def managed_models(self) -> list[str]:
        """Registered models tagged ``modelops.managed=true``."""
        return managed_models(self.client)

    def aliases(self, model: str) -> dict[str, int]:
        """Alias -> version of ``model`` in MLflow."""
        rm = self.client.get_registered_model(model)
        return {alias: int(v) for alias, v in (rm.aliases or {}).items()}

    # -- one pass ----------------------------------------------------------------------------
    def run_once(self, models: Iterable[str] | None = None) -> list[SyncOutcome]:
        """Reconcile every managed model (or ``models``) once; never raises for one model's failure."""
        with self._lock:
            try:
                names = list(models) if models is not None else self.managed_models()
            except Exception as exc:
                self.healthy = False
                self.metrics.up.set(0)
                self.metrics.errors.labels("*", "mlflow_unreachable").inc()
                log.warning("sync: MLflow at %s unreachable: %s", self.settings.tracking_uri, exc)
                return [SyncOutcome(model="*", error=f"MLflow unreachable: {exc}")]
            outcomes = [self._reconcile_safely(name) for name in names]
            self.healthy = all(o.error is None or not o.error.startswith("unreachable") for o in outcomes)
            self.metrics.up.set(1 if self.healthy else 0)
            return outcomes

    def watch(self, stop: threading.Event, interval_s: float | None = None) -> None:
        """Reconcile until ``stop`` is set; back off (up to 30 s) while MLflow or Triton is down."""
        base = interval_s or self.settings.sync_interval_s
        delay = base
        while not stop.is_set():
            outcomes = self.run_once()
            unreachable = any(o.error and o.error.startswith(("MLflow unreachable", "unreachable")) for o in outcomes)
            delay = min(delay * 2, 30.0) if unreachable else base
            stop.wait(delay)

    def _reconcile_safely(self, model: str) -> SyncOutcome:
        try:
            outcome = self.reconcile(model)
        except (TritonControlError, OSError) as exc:
            log.error("sync %s: %s", model, exc)
            self.metrics.errors.labels(model, "triton").inc()
            return SyncOutcome(model=model, error=f"unreachable or failed Triton: {exc}")
        except Exception as exc:
            log.exception("sync %s failed", model)
            self.metrics.errors.labels(model, type(exc).__name__).inc()
            return SyncOutcome(model=model, error=str(exc))
        if outcome.error is None:
            self.metrics.last_success.labels(model).set(time.time())
        return outcome

    def reconcile(self, model: str) -> SyncOutcome:
        """Bring Triton and ``routing.json`` of ``model`` in line with its MLflow aliases."""
        check_model_name(model)
        outcome = SyncOutcome(model=model)
        model_dir = self.root / model
        routing = Routing.read(model_dir) or Routing(model_name=model)
        aliases = self.aliases(model)
        champion, challenger = aliases.get(CHAMPION), aliases.get(CHALLENGER)
        if champion is None:
            outcome.notes.append("no champion alias: nothing to serve")
            outcome.routing = routing
            return outcome

        previous = routing.previous_champion
        if routing.champion is not None and routing.champion != champion:
            previous = routing.champion
        if previous == champion:
            previous = None

        new_routing = routing.model_copy(deep=True)
        new_routing.model_name = model
        gated: list[tuple[str, int]] = []
        if champion != routing.champion:
            gated.append((CHAMPION, champion))
        if challenger is not None and challenger != routing.challenger:
            gated.append((CHALLENGER, challenger))
        wanted = {v for v in (champion, challenger, previous) if v is not None}

        for v in sorted(wanted):
            self._ensure_materialized(model, v)
        for alias, v in gated:
            try:
                self._gate(model, alias, v, routing)
                self._blocked.pop((model, alias, v), None)
            except GateFailed as exc:
                if self._blocked.get((model, alias, v)) != str(exc):
                    self._blocked[(model, alias, v)] = str(exc)
                    self._mark(model, v, f"blocked: {exc}")
                    self.metrics.errors.labels(model, "gate").inc()
                    log.error("sync %s: version %d not served as %s: %s", model, v, alias, exc)
                outcome.error = f"v{v} as {alias}: {exc}"
                # Keep serving what was there; drop the blocked version from the wanted set.
                if alias == CHAMPION:
                    champion, previous = routing.champion, routing.previous_champion
                else:
                    challenger = routing.challenger
                wanted = {x for x in (champion, challenger, previous) if x is not None}
        if champion is None:
            outcome.routing = routing
            return outcome

        tritons = self.tritons
        loaded_before = routing.loaded_versions()
        schemas = [self._schema(model, v) for v in sorted(wanted)]
        config = render_config(model, schemas, wanted, self.options)
        config_changed = write_config(self.root, model, config)
        new_versions = [v for v in sorted(wanted) if v not in loaded_before]
        needs_load = config_changed or any(wanted - t.ready_versions(model) for t in tritons)
        if needs_load:
            try:
                for t in tritons:
                    t.load(model)
                for v in new_versions:
                    ref = Reference.model_validate_json(
                        (version_dir(self.root, model, v) / REFERENCE_FILE).read_bytes()
                    )
                    for t in tritons:
                        err = t.smoke_test(model, v, self._schema(model, v), ref)
                        log.info("smoke test %s v%d on %s: max abs error %.3g", model, v, t.url, err)
            except TritonControlError as exc:
                reason = str(exc)
                for v in new_versions:
                    self._mark(model, v, f"failed: {reason}")
                self.metrics.errors.labels(model, "load_or_smoke").inc()
                log.error("sync %s: %s; reverting to versions %s", model, reason, loaded_before)
                self._revert(model, routing)
                outcome.error = reason
                return outcome
            outcome.changed = True

        now = utc_now()
        if champion != routing.champion:
            new_routing.serving_since[CHAMPION] = now
            self._record_history(model, champion)
        if challenger != routing.challenger:
            if challenger is None:
                new_routing.serving_since.pop(CHALLENGER, None)
            else:
                new_routing.serving_since[CHALLENGER] = now
        new_routing.champion, new_routing.challenger, new_routing.previous_champion = (
            champion,
            challenger,
            previous,
        )
        new_routing.champion_run_id = self._manifest(model, champion).run_id
        new_routing.challenger_run_id = self._manifest(model, challenger).run_id if challenger else None
        if new_routing.model_dump(exclude={"updated_at"}) != routing.model_dump(exclude={"updated_at"}):
            new_routing.updated_at = now
            new_routing.write(model_dir)
            outcome.changed = True
            for v in new_versions:
                self._mark(model, v, "serving")
            log.info("sync %s: champion v%s, challenger v%s, previous v%s", model, champion, challenger, previous)
        outcome.routing = new_routing
        return outcome

    # -- helpers -----------------------------------------------------------------------------
    def _ensure_materialized(self, model: str, version: int) -> None:
        target = version_dir(self.root, model, version)
        if is_complete(target):
            return
        import mlflow

        mv = self.client.get_model_version(model, str(version))
        if not mv.run_id:
            raise GateFailed(f"version {version} has no MLflow run, so no serving bundle")
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(
                run_id=mv.run_id,
                artifact_path=BUNDLE_ARTIFACT_PATH,
                dst_path=tmp,
                tracking_uri=self.settings.tracking_uri,
            )
            materialize_version(self.root, model, version, Path(local))

    def _schema(self, model: str, version: int) -> ModelSchema:
        return ModelSchema.model_validate_json((version_dir(self.root, model, version) / SCHEMA_FILE).read_bytes())

    def _manifest(self, model: str, version: int) -> Manifest:
        return Manifest.model_validate_json((version_dir(self.root, model, version) / MANIFEST_FILE).read_bytes())

    def _gate(self, model: str, alias: str, version: int, routing: Routing) -> None:
        mv = self.client.get_model_version(model, str(version))
        tags = mv.tags or {}
        if tags.get(FORCE_TAG) == "true":
            log.warning("sync %s: v%d is forced past the gates", model, version)
            return
        if self.settings.require_load_test and alias == CHAMPION and tags.get(LOADTEST_STATUS_TAG) != "passed":
            raise GateFailed(
                f"no passing load test recorded ({LOADTEST_STATUS_TAG}={tags.get(LOADTEST_STATUS_TAG, 'missing')}); "
                f"run `modelops bench --model {model} --version {version}` first"
            )
        live = routing.champion
        if live is None or live == version or not is_complete(version_dir(self.root, model, live)):
            return
        live_schema, cand_schema = self._schema(model, live), self._schema(model, version)
        problems = breaking_changes(live_schema, cand_schema)
        if problems:
            raise GateFailed("schema would break the live contract: " + "; ".join(problems))
        if alias != CHAMPION or routing.previous_champion == version:
            return  # challengers are for comparing; a rollback target already served
        metric = cand_schema.quality_metric
        old = self._manifest(model, live).metrics.get(metric.name)
        new = self._manifest(model, version).metrics.get(metric.name)
        if old is None or new is None:
            return
        margin = self.settings.quality_margin
        worse = new < old * (1 - margin) if metric.greater_is_better else new > old * (1 + margin)
        if worse:
            raise GateFailed(
                f"{metric.name} {new:.4g} is worse than the live champion's {old:.4g} beyond the "
                f"{margin:.0%} margin (use `modelops promote --force` if you mean it)"
            )

    def _revert(self, model: str, routing: Routing) -> None:
        versions = routing.loaded_versions()
        if not versions:
            return
        schemas = [self._schema(model, v) for v in versions]
        write_config(self.root, model, render_config(model, schemas, versions, self.options))
        for t in self.tritons:
            try:
                t.load(model)
            except TritonControlError as exc:
                log.error("sync %s: could not restore versions %s on %s: %s", model, versions, t.url, exc)

    def _mark(self, model: str, version: int, status: str) -> None:
        try:
            self.client.set_model_version_tag(model, str(version), SYNC_STATUS_TAG, status[:4000])
        except Exception as exc:  # the registry may be down; the log line still says it
            log.warning("could not tag %s v%d with %r: %s", model, version, status, exc)

    def _record_history(self, model: str, champion: int) -> None:
        try:
            rm = self.client.get_registered_model(model)
            history = json.loads((rm.tags or {}).get(HISTORY_TAG, "[]"))
            if not history or history[-1] != champion:
                history = [*history, champion][-50:]
                self.client.set_registered_model_tag(model, HISTORY_TAG, json.dumps(history))
        except Exception as exc:
            log.warning("could not record champion history of %s: %s", model, exc)
