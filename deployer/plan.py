"""Deciding one sync pass: what to serve, load, smoke-test and route, without MLflow or Triton.

The sync controller (:mod:`deployer.sync`) gathers the inputs of one pass: the ``routing.json``
it found, the MLflow aliases, the tags of the versions new to an alias, and each version's
bundle read once (:class:`VersionBundle`). :func:`plan_pass` turns them into a :class:`SyncPlan`:
the gate verdict of each new version and why it failed, the versions to keep loaded, the
``config.pbtxt`` that serves them, the versions to smoke-test after a load, and the
``routing.json`` to write once every step passed. The controller then applies the plan step by
step. Nothing here talks to MLflow or Triton, and only :meth:`VersionBundle.read` and
:attr:`VersionBundle.reference` read files, so every decision is a unit test with fakes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from modelspec import REFERENCE_FILE, Manifest, ModelSchema, Reference, Routing, breaking_changes
from modelspec.layout import MANIFEST_FILE, SCHEMA_FILE
from modelspec.repository import ServingOptions, render_config
from modelspec.tags import FORCE_TAG, LOADTEST_STATUS_TAG

CHAMPION, CHALLENGER = "champion", "challenger"


class BundleMissing(FileNotFoundError):
    """A version the pass must serve has no readable bundle in the model repository.

    An OSError, like the unreadable file it stands for: the pass fails as it did when the
    controller read the file at the point of use.
    """


@dataclass
class VersionBundle:
    """One version's documents in the model repository, read once per pass.

    ``schema`` and ``manifest`` are read with the bundle: the gates, the config and the routing
    need them. The reference rows are read on first use of :attr:`reference`, i.e. only for a
    version that is smoke-tested after a load; a version already served never needs them.
    """

    version: int
    folder: Path
    schema: ModelSchema
    manifest: Manifest
    loaded_reference: Reference | None = None
    """The reference rows once read (or given, in tests); None until then."""

    @classmethod
    def read(cls, folder: Path, version: int) -> VersionBundle:
        """Read the schema and manifest of the version in ``folder``."""
        return cls(
            version=version,
            folder=folder,
            schema=ModelSchema.model_validate_json((folder / SCHEMA_FILE).read_bytes()),
            manifest=Manifest.model_validate_json((folder / MANIFEST_FILE).read_bytes()),
        )

    @property
    def reference(self) -> Reference:
        """Inputs and expected outputs of the smoke test (read from ``reference.json`` once)."""
        if self.loaded_reference is None:
            self.loaded_reference = Reference.model_validate_json((self.folder / REFERENCE_FILE).read_bytes())
        return self.loaded_reference


@dataclass(frozen=True)
class Wanted:
    """What the MLflow aliases ask to serve, before any gate."""

    champion: int
    challenger: int | None
    previous: int | None
    """The champion before this one (kept loaded for a fast rollback); never the champion itself."""
    gated: tuple[tuple[str, int], ...]
    """(alias, version) for each version new to its alias, champion first: each must pass its gates."""

    @property
    def versions(self) -> list[int]:
        """Every version the aliases ask for, ascending: each must be in the repository."""
        return sorted({v for v in (self.champion, self.challenger, self.previous) if v is not None})


def wanted_from_aliases(routing: Routing, aliases: Mapping[str, int]) -> Wanted | None:
    """The versions ``aliases`` ask for, given what ``routing`` serves; None without a champion alias."""
    champion, challenger = aliases.get(CHAMPION), aliases.get(CHALLENGER)
    if champion is None:
        return None
    previous = routing.previous_champion
    if routing.champion is not None and routing.champion != champion:
        previous = routing.champion
    if previous == champion:
        previous = None
    gated: list[tuple[str, int]] = []
    if champion != routing.champion:
        gated.append((CHAMPION, champion))
    if challenger is not None and challenger != routing.challenger:
        gated.append((CHALLENGER, challenger))
    return Wanted(champion=champion, challenger=challenger, previous=previous, gated=tuple(gated))


def rollback_target(history: Iterable[int], champion_alias: int | None, routing: Routing | None) -> int | None:
    """The version ``modelops rollback`` moves the champion alias to; None when there is none.

    The champion before the one the alias names now, from MLflow's champion history (the
    champions the sync controller served, oldest first). The alias, not ``routing.json``, says
    what is champion: a promotion the controller has not applied yet is the one rolled back, so
    the champion goes back one version, not two. ``routing.json``'s previous champion is the
    answer only when the history holds no other version (a model served before it was kept).
    """
    earlier = [v for v in history if v != champion_alias]
    if earlier:
        return earlier[-1]
    if routing is not None and routing.previous_champion not in (None, champion_alias):
        return routing.previous_champion
    return None


@dataclass(frozen=True)
class PlanSettings:
    """The settings a plan depends on (from :class:`deployer.settings.RegistrySettings`)."""

    options: ServingOptions
    """How the written ``config.pbtxt`` asks Triton to serve; recorded in ``routing.json``."""
    quality_margin: float = 0.05
    require_load_test: bool = False


@dataclass(frozen=True)
class GateVerdict:
    """Whether one version may serve as one alias, and why not."""

    alias: str
    version: int
    reason: str | None = None
    """None: the version passed (or was forced past) its gates."""
    forced: bool = False
    held: bool = False
    """Held back: the version failed its load or smoke test and waits for its retry (not a gate of its own)."""

    @property
    def passed(self) -> bool:
        """Whether the version may serve as ``alias``."""
        return self.reason is None


def gate(
    model: str,
    alias: str,
    version: int,
    routing: Routing,
    bundles: Mapping[int, VersionBundle],
    tags: Mapping[str, str],
    settings: PlanSettings,
) -> GateVerdict:
    """The promotion gates of ``version`` of ``model`` as ``alias`` against the live champion of ``routing``.

    A version tagged ``modelops.force=true`` skips them (once: the controller removes the tag when
    it serves the version); a rollback to the previous champion skips them too, since it served
    as champion before the live one and must always be possible (the live champion may have
    added a field the rollback target lacks); a champion may need a passing load test; the
    schema must not break the live contract; a new champion's quality metric must not be worse
    than the live champion's beyond the margin (not checked for challengers, which are for
    comparing).
    """
    if tags.get(FORCE_TAG) == "true":
        return GateVerdict(alias, version, forced=True)
    if alias == CHAMPION and routing.champion is not None and routing.previous_champion == version:
        return GateVerdict(alias, version)
    if settings.require_load_test and alias == CHAMPION and tags.get(LOADTEST_STATUS_TAG) != "passed":
        return GateVerdict(
            alias,
            version,
            f"no passing load test recorded ({LOADTEST_STATUS_TAG}={tags.get(LOADTEST_STATUS_TAG, 'missing')}); "
            f"run `modelops bench --model {model} --version {version}` first",
        )
    live = routing.champion
    if live is None or live == version or live not in bundles:
        return GateVerdict(alias, version)
    live_bundle, candidate = bundles[live], bundles[version]
    problems = breaking_changes(live_bundle.schema, candidate.schema)
    if problems:
        return GateVerdict(alias, version, "schema would break the live contract: " + "; ".join(problems))
    if alias != CHAMPION:
        return GateVerdict(alias, version)
    metric = candidate.schema.quality_metric
    old = live_bundle.manifest.metrics.get(metric.name)
    new = candidate.manifest.metrics.get(metric.name)
    if old is None or new is None:
        return GateVerdict(alias, version)
    if not math.isfinite(new):  # NaN compares false with everything: it would pass as "not worse"
        return GateVerdict(
            alias,
            version,
            f"{metric.name} of v{version} is {new}, which the quality gate cannot compare; "
            "check the training run, then re-register the version",
        )
    margin = settings.quality_margin
    worse = new < old * (1 - margin) if metric.greater_is_better else new > old * (1 + margin)
    if worse:
        return GateVerdict(
            alias,
            version,
            f"{metric.name} {new:.4g} is worse than the live champion's {old:.4g} beyond the "
            f"{margin:.0%} margin (use `modelops promote --force` if you mean it)",
        )
    return GateVerdict(alias, version)


@dataclass(frozen=True)
class SyncPlan:
    """What one pass of one model will do, decided before anything is written."""

    model: str
    current: Routing
    """``routing.json`` as the pass found it (what the gateway follows now)."""
    wanted: Wanted
    verdicts: tuple[GateVerdict, ...]
    champion: int | None
    """The champion after the gates; None when the first champion ever was blocked (nothing to serve)."""
    challenger: int | None
    previous: int | None
    bundles: Mapping[int, VersionBundle]
    """Each version read in this pass: every version of :attr:`keep` and of the current routing."""
    options: ServingOptions
    config: str | None
    """The ``config.pbtxt`` that serves :attr:`keep`; None when nothing is served."""

    @property
    def keep(self) -> list[int]:
        """The versions to keep loaded in every Triton, ascending."""
        return sorted({v for v in (self.champion, self.challenger, self.previous) if v is not None})

    @property
    def new_versions(self) -> list[int]:
        """Versions the current routing does not serve: each is smoke-tested after a load."""
        loaded = set(self.current.loaded_versions())
        return [v for v in self.keep if v not in loaded]

    @property
    def blocked(self) -> list[GateVerdict]:
        """The verdicts of the versions that failed their gates."""
        return [v for v in self.verdicts if not v.passed]

    @property
    def champion_changed(self) -> bool:
        """Whether the champion differs from the one routed now."""
        return self.champion is not None and self.champion != self.current.champion

    def needs_load(self, config_changed: bool, ready_per_triton: Iterable[set[int]]) -> bool:
        """Whether Triton must (re)load the model: new config or serving options, or a replica lacks a version.

        A config file unchanged on disk does not say Triton loaded it: a pass may have written it and
        stopped before the load. So serving options that differ from those ``routing.json``
        recorded (what Triton was last seen to load) need a load too, before they are routed.
        ``ready_per_triton`` is consumed lazily and only when neither changed, so the caller can
        pass a generator that asks each replica in turn.
        """
        keep = set(self.keep)
        options_changed = self.current.serving != self.options
        return config_changed or options_changed or any(keep - ready for ready in ready_per_triton)

    def routing_at(self, now: str) -> Routing | None:
        """The ``routing.json`` to write at ``now`` once the plan's steps passed; None when it stays as it is."""
        if self.champion is None:
            return None
        new = self.current.model_copy(deep=True)
        new.model_name = self.model
        if self.champion != self.current.champion:
            new.serving_since[CHAMPION] = now
        if self.challenger != self.current.challenger:
            if self.challenger is None:
                new.serving_since.pop(CHALLENGER, None)
            else:
                new.serving_since[CHALLENGER] = now
        new.champion, new.challenger, new.previous_champion = self.champion, self.challenger, self.previous
        new.champion_run_id = self.bundles[self.champion].manifest.run_id
        new.challenger_run_id = self.bundles[self.challenger].manifest.run_id if self.challenger else None
        # The gateway splits requests at the max_batch_size of the config Triton loaded.
        new.serving = self.options
        if new.model_dump(exclude={"updated_at"}) == self.current.model_dump(exclude={"updated_at"}):
            return None
        new.updated_at = now
        return new

    def revert_config(self) -> str | None:
        """The ``config.pbtxt`` that restores the current routing's versions; None when it serves none.

        Rendered with the options the current routing recorded, so the restored config is the
        one the gateway was told about.
        """
        versions = self.current.loaded_versions()
        if not versions:
            return None
        schemas = [_bundle(self.model, self.bundles, v).schema for v in versions]
        options = self.current.serving if self.current.serving is not None else self.options
        return render_config(self.model, schemas, versions, options)


def plan_pass(
    model: str,
    routing: Routing,
    wanted: Wanted,
    bundles: Mapping[int, VersionBundle],
    tags: Mapping[int, Mapping[str, str]],
    settings: PlanSettings,
    held_back: Mapping[int, str] | None = None,
) -> SyncPlan:
    """Decide one pass of ``model``.

    Args:
        model: The model's name.
        routing: ``routing.json`` as found (an empty :class:`Routing` when the model was never served).
        wanted: What the aliases ask for (:func:`wanted_from_aliases`).
        bundles: Version -> bundle: every version of ``wanted`` and those of ``routing`` that are readable.
        tags: Version -> MLflow tags, for each version in ``wanted.gated``.
        settings: Serving options and gate settings.
        held_back: Version -> why: versions that failed their load or smoke test and are not to be
            tried again in this pass; each is blocked like a version that failed a gate.

    Returns:
        The plan. A version blocked by its gates is replaced by the one its alias serves now.

    Raises:
        BundleMissing: a version to gate or serve has no bundle in ``bundles``.
    """
    for v in wanted.versions:
        _bundle(model, bundles, v)
    champion: int | None = wanted.champion
    challenger, previous = wanted.challenger, wanted.previous
    verdicts: list[GateVerdict] = []
    held = held_back or {}
    for alias, version in wanted.gated:
        if version in held:
            verdict = GateVerdict(alias, version, held[version], held=True)
        else:
            verdict = gate(model, alias, version, routing, bundles, tags.get(version, {}), settings)
        verdicts.append(verdict)
        if verdict.passed:
            continue
        # Keep serving what was there in place of the blocked version.
        if alias == CHAMPION:
            champion, previous = routing.champion, routing.previous_champion
        else:
            challenger = routing.challenger
    plan = SyncPlan(
        model=model,
        current=routing,
        wanted=wanted,
        verdicts=tuple(verdicts),
        champion=champion,
        challenger=challenger,
        previous=previous,
        bundles=bundles,
        options=settings.options,
        config=None,
    )
    if champion is None:
        return plan
    schemas = [_bundle(model, bundles, v).schema for v in plan.keep]
    return replace(plan, config=render_config(model, schemas, plan.keep, settings.options))


def _bundle(model: str, bundles: Mapping[int, VersionBundle], version: int) -> VersionBundle:
    try:
        return bundles[version]
    except KeyError:
        raise BundleMissing(f"{model} v{version}: no readable bundle in the model repository") from None
