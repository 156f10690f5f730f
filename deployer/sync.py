"""The sync controller: reconcile MLflow aliases with what Triton serves.

For every managed model (registered model tag ``modelops.managed=true``) one pass:

1. gathers: the aliases ``champion`` and ``challenger`` from MLflow, ``routing.json``, and each
   wanted version's bundle, read once (:class:`deployer.plan.VersionBundle`) after copying it
   into ``model_repository/<model>/<N>/`` when missing (atomic, never overwritten);
2. plans (:func:`deployer.plan.plan_pass`, no I/O): the gates of each version new to an alias
   (schema must not break the live contract; a new champion's quality metric not worse than the
   live champion's beyond the configured margin; a version tagged ``modelops.force`` skips the
   gates), the loaded set {champion, challenger, previous champion} and its ``config.pbtxt``;
3. applies the plan step by step, recording each step per version and per Triton replica in
   :attr:`SyncOutcome.steps`: writes ``config.pbtxt``, loads the model in every replica
   (explicit mode; versions that stay keep serving), runs a smoke inference on each new version
   there and compares it with the outputs stored at export;
4. only then rewrites ``routing.json`` (with the serving options the config was rendered with),
   which the gateway follows.

A failure at any step leaves the old routing (and the old versions loaded) in place, and
says why: a log line, the version tag ``modelops.sync_status``, the metric
``modelops_sync_errors_total`` and ``modelops status``. A version that failed its load or smoke
test is held back (its alias keeps what it served) and retried with an exponential backoff, or at
once when the aliases move or its bundle changes.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge

from deployer.outcome import StepRecord, SyncOutcome
from deployer.plan import (
    CHALLENGER,
    CHAMPION,
    PlanSettings,
    SyncPlan,
    VersionBundle,
    Wanted,
    plan_pass,
    wanted_from_aliases,
)
from deployer.settings import RegistrySettings
from deployer.triton_control import TritonControl, TritonControlError
from modelspec import Routing
from modelspec.bundle import utc_now
from modelspec.repository import check_model_name, is_complete, materialize_version, version_dir, write_config
from modelspec.tags import BUNDLE_ARTIFACT_PATH, FORCE_TAG, HISTORY_TAG, MANAGED_TAG, SYNC_STATUS_TAG

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "GateFailed",
    "StepRecord",
    "SyncController",
    "SyncMetrics",
    "SyncOutcome",
    "managed_models",
]

log = logging.getLogger(__name__)


class GateFailed(RuntimeError):
    """A version may not be served: the message says which gate and why."""


@dataclass
class _Failure:
    """A version's failed load or smoke test, remembered so it is not retried every pass."""

    fingerprint: str
    """The bundle's files (name, size, mtime) when it failed: a rebuilt bundle is retried at once."""
    aliases: tuple[int, int | None]
    """(champion, challenger) of the MLflow aliases when it failed: a moved alias is retried at once."""
    reason: str
    attempts: int
    backoff_s: float
    retry_at: float
    """Monotonic time from which the version may be tried again."""


def bundle_fingerprint(folder: Path) -> str:
    """What identifies a version's artifacts on disk: each file's name, size and modification time."""
    try:
        entries = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file())
    except OSError:
        return ""
    return json.dumps(entries)


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
        # (model, version) -> its last failed load or smoke test (issue 14, item 5): without it a
        # broken version is reloaded into every Triton, and tagged in MLflow, on every pass.
        self._failures: dict[tuple[str, int], _Failure] = {}
        # model -> the failed load of a config that brings no new version (new serving options, a
        # replica to refill): keyed by the config text, with the same backoff.
        self._config_failures: dict[str, tuple[str, _Failure]] = {}
        self.clock: Callable[[], float] = time.monotonic

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
        partial = SyncOutcome(model=model)  # keeps the steps recorded before an exception
        try:
            outcome = self.reconcile(model, partial)
        except (TritonControlError, OSError) as exc:
            log.error("sync %s: %s", model, exc)
            self.metrics.errors.labels(model, "triton").inc()
            return SyncOutcome(
                model=model, error=f"unreachable or failed Triton: {exc}", steps=partial.steps, plan=partial.plan
            )
        except Exception as exc:
            log.exception("sync %s failed", model)
            self.metrics.errors.labels(model, type(exc).__name__).inc()
            return SyncOutcome(model=model, error=str(exc), steps=partial.steps, plan=partial.plan)
        if outcome.error is None:
            self.metrics.last_success.labels(model).set(time.time())
        return outcome

    def reconcile(self, model: str, outcome: SyncOutcome | None = None) -> SyncOutcome:
        """Bring Triton and ``routing.json`` of ``model`` in line with its MLflow aliases.

        Gathers the inputs (each wanted version's bundle read once), plans the pass
        (:func:`deployer.plan.plan_pass`), then applies it step by step. Each step's outcome is
        recorded in ``outcome`` as it happens, so a caller that catches an exception still has them.
        """
        check_model_name(model)
        outcome = outcome if outcome is not None else SyncOutcome(model=model)
        routing = Routing.read(self.root / model) or Routing(model_name=model)
        wanted = wanted_from_aliases(routing, self.aliases(model))
        if wanted is None:
            outcome.notes.append("no champion alias: nothing to serve")
            outcome.routing = routing
            return outcome
        bundles = self._read_bundles(model, wanted, routing, outcome)
        held = self._held_back(model, wanted, bundles)
        tags = {v: self._version_tags(model, v) for v in dict.fromkeys(v for _, v in wanted.gated) if v not in held}
        settings = PlanSettings(
            options=self.options,
            quality_margin=self.settings.quality_margin,
            require_load_test=self.settings.require_load_test,
        )
        plan = plan_pass(model, routing, wanted, bundles, tags, settings, held)
        outcome.plan = plan
        self._apply_verdicts(plan, outcome)
        if plan.champion is None:
            outcome.routing = routing
            return outcome
        tritons = self.tritons
        if self._load_and_smoke(plan, tritons, outcome):
            self._route(plan, tritons, outcome)
        return outcome

    # -- gathering ---------------------------------------------------------------------------
    def _read_bundles(
        self, model: str, wanted: Wanted, routing: Routing, outcome: SyncOutcome
    ) -> dict[int, VersionBundle]:
        """Every wanted version's bundle (copied from MLflow first when missing) and the routed ones on disk."""
        for v in wanted.versions:
            if self._ensure_materialized(model, v):
                outcome.record(StepRecord("materialize", ok=True, version=v))
        bundles = {v: VersionBundle.read(version_dir(self.root, model, v), v) for v in wanted.versions}
        # The versions routed now are needed only when a gate sends an alias back to one of them;
        # plan_pass says so (BundleMissing) if one is then unreadable.
        for v in routing.loaded_versions():
            if v not in bundles:
                try:
                    bundles[v] = VersionBundle.read(version_dir(self.root, model, v), v)
                except (OSError, ValueError) as exc:
                    log.debug("sync %s: routed v%d not readable: %s", model, v, exc)
        return bundles

    def _held_back(self, model: str, wanted: Wanted, bundles: dict[int, VersionBundle]) -> dict[int, str]:
        """Versions that failed a load or smoke test and wait for their retry: version -> why.

        A failure is forgotten when the aliases moved or the version's bundle changed since, so
        those are tried again at once; otherwise the version waits out its backoff.
        """
        aliases = (wanted.champion, wanted.challenger)
        held: dict[int, str] = {}
        for key, failure in list(self._failures.items()):
            if key[0] != model:
                continue
            v = key[1]
            bundle = bundles.get(v)
            if failure.aliases != aliases or bundle is None or bundle_fingerprint(bundle.folder) != failure.fingerprint:
                del self._failures[key]
                continue
            if failure.retry_at > self.clock():
                # The same words every pass of one backoff: the verdict is logged once per reason.
                held[v] = (
                    f"failed its load or smoke test ({failure.reason}); retried {failure.backoff_s:.0f} s after "
                    f"failure {failure.attempts}, or at once when its alias moves or its bundle changes"
                )
        return held

    def _remember_failure(self, plan: SyncPlan, versions: Iterable[int], reason: str) -> None:
        """Remember that ``versions`` failed; tag each in MLflow only when its failure reason is new."""
        model = plan.model
        aliases = (plan.wanted.champion, plan.wanted.challenger)
        for v in versions:
            old = self._failures.get((model, v))
            attempts = old.attempts + 1 if old is not None else 1
            wait = min(self.settings.failure_backoff_s * 2 ** (attempts - 1), self.settings.failure_backoff_max_s)
            fingerprint = bundle_fingerprint(plan.bundles[v].folder)
            self._failures[(model, v)] = _Failure(fingerprint, aliases, reason, attempts, wait, self.clock() + wait)
            if old is None or old.reason != reason:
                self._mark(model, v, f"failed: {reason}")
            log.error("sync %s: v%d failed (attempt %d); next try in %.0f s: %s", model, v, attempts, wait, reason)

    def _remember_config_failure(self, plan: SyncPlan, reason: str) -> None:
        """Remember that loading ``plan.config`` (no new version in it) failed, and when to try it again."""
        assert plan.config is not None
        old = self._config_failures.get(plan.model)
        attempts = old[1].attempts + 1 if old is not None and old[0] == plan.config else 1
        wait = min(self.settings.failure_backoff_s * 2 ** (attempts - 1), self.settings.failure_backoff_max_s)
        aliases = (plan.wanted.champion, plan.wanted.challenger)
        failure = _Failure("", aliases, reason, attempts, wait, self.clock() + wait)
        self._config_failures[plan.model] = (plan.config, failure)
        log.error("sync %s: load failed (attempt %d); next try in %.0f s: %s", plan.model, attempts, wait, reason)

    def _version_tags(self, model: str, version: int) -> dict[str, str]:
        return dict(self.client.get_model_version(model, str(version)).tags or {})

    # -- applying ----------------------------------------------------------------------------
    def _apply_verdicts(self, plan: SyncPlan, outcome: SyncOutcome) -> None:
        """Say why a version is blocked (tag, metric and log once per reason), or that it was forced."""
        model = plan.model
        for verdict in plan.verdicts:
            alias, v = verdict.alias, verdict.version
            key = (model, alias, v)
            if verdict.reason is None:
                if verdict.forced:
                    log.warning("sync %s: v%d is forced past the gates", model, v)
                self._blocked.pop(key, None)
                outcome.record(
                    StepRecord("gate", ok=True, version=v, reason="forced past the gates" if verdict.forced else "")
                )
                continue
            if self._blocked.get(key) != verdict.reason:
                self._blocked[key] = verdict.reason
                if not verdict.held:  # a held version's tag and metric already say why it failed
                    self._mark(model, v, f"blocked: {verdict.reason}")
                    self.metrics.errors.labels(model, "gate").inc()
                log.error("sync %s: version %d not served as %s: %s", model, v, alias, verdict.reason)
            outcome.record(StepRecord("gate", ok=False, version=v, reason=verdict.reason))
            outcome.error = f"v{v} as {alias}: {verdict.reason}"

    def _load_and_smoke(self, plan: SyncPlan, tritons: list[TritonControl], outcome: SyncOutcome) -> bool:
        """Write the config, load it where needed and smoke-test the new versions; False after a revert."""
        model = plan.model
        assert plan.config is not None  # a plan with a champion has a config
        held = self._config_failures.get(model)
        aliases = (plan.wanted.champion, plan.wanted.challenger)
        if held is not None and (held[0] != plan.config or held[1].aliases != aliases or plan.new_versions):
            del self._config_failures[model]
        elif held is not None and held[1].retry_at > self.clock():
            failure = held[1]
            outcome.error = (
                f"loading {model} failed ({failure.reason}); retried {failure.backoff_s:.0f} s after failure "
                f"{failure.attempts}, or at once when the config or the aliases change"
            )
            return False
        config_changed = write_config(self.root, model, plan.config)
        outcome.record(StepRecord("config", ok=True, reason="rewritten" if config_changed else "unchanged"))
        needs_load = plan.needs_load(config_changed, (t.ready_versions(model) for t in tritons))
        if not needs_load and not plan.new_versions:
            return True
        try:
            if needs_load:
                for t in tritons:
                    self._load(plan, t, outcome)
            # Every version routing.json does not serve yet is smoke-tested in this pass, loaded
            # now or by an earlier pass that stopped (or was killed) before its smoke test passed
            # (issue 14, item 1): the config being unchanged says nothing about a test.
            for v in plan.new_versions:
                self._smoke(plan, v, tritons, outcome)
        except Exception as exc:
            # Any exception of a load or smoke step (a client timeout, a ValueError from shape
            # handling, an unreadable reference.json) fails the new versions and reverts.
            reason = str(exc) if isinstance(exc, TritonControlError) else f"{type(exc).__name__}: {exc}"
            failed_smoke = [s.version for s in outcome.steps if s.step == "smoke" and not s.ok and s.version]
            if plan.new_versions:
                self._remember_failure(plan, failed_smoke[-1:] or plan.new_versions, reason)
            else:
                self._remember_config_failure(plan, reason)
            self.metrics.errors.labels(model, "load_or_smoke").inc()
            log.error("sync %s: %s; reverting to versions %s", model, reason, plan.current.loaded_versions())
            self._revert(plan, outcome)
            outcome.error = reason
            return False
        self._config_failures.pop(model, None)
        outcome.changed = True
        return True

    def _load(self, plan: SyncPlan, t: TritonControl, outcome: SyncOutcome) -> None:
        """Load the model on one replica: every version of the plan's ``keep`` is then loaded there."""
        try:
            t.load(plan.model)
        except Exception as exc:
            outcome.record(StepRecord("load", ok=False, triton=t.url, reason=str(exc)))
            raise
        for v in plan.keep:
            outcome.record(StepRecord("load", ok=True, version=v, triton=t.url))

    def _smoke(self, plan: SyncPlan, version: int, tritons: list[TritonControl], outcome: SyncOutcome) -> None:
        """Smoke-test ``version`` on every replica against the outputs stored at export."""
        bundle = plan.bundles[version]
        try:
            reference = bundle.reference
        except Exception as exc:
            outcome.record(StepRecord("smoke", ok=False, version=version, reason=f"reference unreadable: {exc}"))
            raise
        for t in tritons:
            try:
                err = t.smoke_test(plan.model, version, bundle.schema, reference)
            except Exception as exc:
                outcome.record(StepRecord("smoke", ok=False, version=version, triton=t.url, reason=str(exc)))
                raise
            outcome.record(StepRecord("smoke", ok=True, version=version, triton=t.url, max_error=err))
            log.info("smoke test %s v%d on %s: max abs error %.3g", plan.model, version, t.url, err)

    def _route(self, plan: SyncPlan, tritons: list[TritonControl], outcome: SyncOutcome) -> None:
        """Write ``routing.json`` when it changes; tag the new versions ``serving``."""
        model = plan.model
        urls = [t.url for t in tritons]
        untested = [v for v in plan.new_versions if not outcome.smoke_passed(v, urls)]
        if untested:  # _load_and_smoke tests each new version; this guards the invariant itself
            reason = f"versions {untested} have no passing smoke test on every Triton in this pass"
            outcome.record(StepRecord("route", ok=False, reason=reason))
            outcome.error = reason
            return
        if plan.champion_changed:
            assert plan.champion is not None
            self._record_history(model, plan.champion)
        new_routing = plan.routing_at(utc_now())
        if new_routing is None:
            outcome.routing = plan.current
            outcome.record(StepRecord("route", ok=True, reason="unchanged"))
            return
        new_routing.write(self.root / model)
        outcome.changed = True
        for v in plan.new_versions:
            self._failures.pop((model, v), None)
            self._mark(model, v, "serving")
        for verdict in plan.verdicts:
            if verdict.forced:
                self._consume_force(model, verdict.version, verdict.alias, new_routing.updated_at)
        log.info(
            "sync %s: champion v%s, challenger v%s, previous v%s", model, plan.champion, plan.challenger, plan.previous
        )
        outcome.record(StepRecord("route", ok=True))
        outcome.routing = new_routing

    # -- helpers -----------------------------------------------------------------------------
    def _ensure_materialized(self, model: str, version: int) -> bool:
        """Copy the version's bundle from MLflow when the repository lacks it; True when it copied."""
        target = version_dir(self.root, model, version)
        if is_complete(target):
            return False
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
        return True

    def _revert(self, plan: SyncPlan, outcome: SyncOutcome) -> None:
        """Put back the config of the versions routed now and reload it in every Triton."""
        config = plan.revert_config()
        if config is None:
            return
        versions = plan.current.loaded_versions()
        write_config(self.root, plan.model, config)
        for t in self.tritons:
            try:
                t.load(plan.model)
            except Exception as exc:  # one replica's failure must not stop the revert of the others
                log.error("sync %s: could not restore versions %s on %s: %s", plan.model, versions, t.url, exc)
                outcome.record(StepRecord("revert", ok=False, triton=t.url, reason=str(exc)))
            else:
                outcome.record(StepRecord("revert", ok=True, triton=t.url))

    def _mark(self, model: str, version: int, status: str) -> None:
        try:
            self.client.set_model_version_tag(model, str(version), SYNC_STATUS_TAG, status[:4000])
        except Exception as exc:  # the registry may be down; the log line still says it
            log.warning("could not tag %s v%d with %r: %s", model, version, status, exc)

    def _consume_force(self, model: str, version: int, alias: str, when: str | None) -> None:
        """Remove the force tag of a version now served: a force is for one promotion, not every later gate."""
        try:
            self.client.delete_model_version_tag(model, str(version), FORCE_TAG)
        except Exception as exc:  # the tag then skips the gates once more, the next time the version is gated
            log.warning("could not remove %s from %s v%d: %s", FORCE_TAG, model, version, exc)
            return
        self._mark(model, version, f"serving (forced past the gates as {alias} at {when})")
        log.info("sync %s: v%d served as %s; its force tag is consumed", model, version, alias)

    def _record_history(self, model: str, champion: int) -> None:
        try:
            rm = self.client.get_registered_model(model)
            history = json.loads((rm.tags or {}).get(HISTORY_TAG, "[]"))
            if not history or history[-1] != champion:
                history = [*history, champion][-50:]
                self.client.set_registered_model_tag(model, HISTORY_TAG, json.dumps(history))
        except Exception as exc:
            log.warning("could not record champion history of %s: %s", model, exc)
