"""The sync controller's plan of one pass (deployer.plan), and that plan applied with fake MLflow and Triton.

The planning tests build bundles in memory: no MLflow, no Triton, no files. The tests at the end
run ``SyncController.reconcile`` against a model repository in a temporary folder with a fake
MLflow client and fake Triton replicas, to check what each step records and what is written.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from deployer.plan import (
    BundleMissing,
    PlanSettings,
    SyncPlan,
    VersionBundle,
    Wanted,
    plan_pass,
    rollback_target,
    wanted_from_aliases,
)
from modelspec import (
    BUNDLE_FILES,
    CategoricalFeature,
    Manifest,
    ModelSchema,
    NumericFeature,
    OutputSpec,
    Reference,
    Routing,
)
from modelspec.repository import ServingOptions
from modelspec.tags import FORCE_TAG, LOADTEST_STATUS_TAG, SYNC_STATUS_TAG

MODEL = "m"
NOW = "2030-01-01T00:00:00+00:00"
OPTIONS = ServingOptions(max_batch_size=64)
SETTINGS = PlanSettings(options=OPTIONS, quality_margin=0.05)


def schema(categories: tuple[str, ...] = ("a", "b")) -> ModelSchema:
    return ModelSchema(
        model_name=MODEL,
        features=[
            NumericFeature(name="x", minimum=0, maximum=1, example=0.5),
            CategoricalFeature(name="c", categories=list(categories), example=categories[0]),
        ],
        outputs=[OutputSpec(name="y")],
    )


def bundle(version: int, rmse: float = 1.0, categories: tuple[str, ...] = ("a", "b")) -> VersionBundle:
    manifest = Manifest(
        model_name=MODEL,
        version=version,
        run_id=f"run{version}",
        data_hash="sha256:x",
        git_commit="c",
        parity_max_abs_error=0,
        metrics={"rmse": rmse},
    )
    reference = Reference(numeric=[[0.5]], categorical=[[0]], outputs={"y": [1.0]}, tolerance=1e-4)
    return VersionBundle(version, Path(f"/nowhere/{version}"), schema(categories), manifest, loaded_reference=reference)


def routed(champion: int | None = None, challenger: int | None = None, previous: int | None = None) -> Routing:
    """A routing.json as a previous pass with OPTIONS wrote it."""
    return Routing(
        model_name=MODEL,
        champion=champion,
        challenger=challenger,
        previous_champion=previous,
        champion_run_id=f"run{champion}" if champion else None,
        challenger_run_id=f"run{challenger}" if challenger else None,
        updated_at="2029-01-01T00:00:00+00:00",
        serving_since={
            **({"champion": "2029-01-01T00:00:00+00:00"} if champion else {}),
            **({"challenger": "2029-01-01T00:00:00+00:00"} if challenger else {}),
        },
        serving=OPTIONS,
    )


def plan(
    routing: Routing,
    aliases: dict[str, int],
    bundles: dict[int, VersionBundle],
    tags: dict[int, dict[str, str]] | None = None,
    settings: PlanSettings = SETTINGS,
) -> SyncPlan:
    wanted = wanted_from_aliases(routing, aliases)
    assert wanted is not None
    return plan_pass(MODEL, routing, wanted, bundles, tags or {}, settings)


# -- planning ---------------------------------------------------------------------------------


def test_no_champion_alias_plans_nothing() -> None:
    assert wanted_from_aliases(routed(1), {"challenger": 2}) is None


def test_first_champion_is_loaded_smoke_tested_and_routed_with_the_serving_options() -> None:
    p = plan(Routing(model_name=MODEL), {"champion": 1}, {1: bundle(1)})
    assert [(v.alias, v.version, v.passed) for v in p.verdicts] == [("champion", 1, True)]
    assert (p.champion, p.challenger, p.previous, p.keep, p.new_versions) == (1, None, None, [1], [1])
    assert p.config is not None and "versions: [ 1 ]" in p.config and "max_batch_size: 64" in p.config
    new = p.routing_at(NOW)
    assert new is not None
    assert (new.champion, new.champion_run_id, new.serving, new.updated_at) == (1, "run1", OPTIONS, NOW)
    assert new.serving_since == {"champion": NOW}
    assert p.champion_changed and p.revert_config() is None  # nothing was served before


def test_promotion_of_a_new_champion_keeps_the_old_one_loaded_as_previous() -> None:
    current = routed(1)
    p = plan(current, {"champion": 2}, {1: bundle(1), 2: bundle(2, rmse=0.9)})
    assert p.wanted == Wanted(champion=2, challenger=None, previous=1, gated=(("champion", 2),))
    assert not p.blocked
    assert (p.champion, p.previous, p.keep, p.new_versions) == (2, 1, [1, 2], [2])
    assert p.config is not None and "versions: [ 1, 2 ]" in p.config
    new = p.routing_at(NOW)
    assert new is not None
    assert (new.champion, new.previous_champion, new.champion_run_id) == (2, 1, "run2")
    assert new.serving_since["champion"] == NOW
    assert current.champion == 1, "the plan must not change the routing it was given"


def test_worse_quality_keeps_the_old_champion_and_says_why() -> None:
    p = plan(routed(2, previous=1), {"champion": 3}, {1: bundle(1), 2: bundle(2), 3: bundle(3, rmse=1.2)})
    (verdict,) = p.blocked
    assert verdict.version == 3 and verdict.reason is not None
    assert "rmse 1.2 is worse than the live champion's 1" in verdict.reason and "5% margin" in verdict.reason
    assert (p.champion, p.previous, p.keep, p.new_versions) == (2, 1, [1, 2], [])
    assert p.routing_at(NOW) is None, "routing.json stays as it is"
    assert not p.champion_changed
    # Within the margin passes.
    assert not plan(routed(2), {"champion": 3}, {2: bundle(2), 3: bundle(3, rmse=1.04)}).blocked


@pytest.mark.parametrize(
    ("greater_is_better", "new", "blocked"),
    [
        # Live champion at 20: 5 % is 1.0 either way, exactly representable (the boundary is inclusive).
        (False, 21.0, False),
        (False, 21.001, True),
        (False, 20.5, False),
        (True, 19.0, False),
        (True, 18.999, True),
        (True, 25.0, False),
    ],
)
def test_the_quality_margin_is_relative_and_inclusive_at_its_boundary(
    greater_is_better: bool, new: float, blocked: bool
) -> None:
    # A live metric of 20 tells a relative margin (1.0) from an absolute one (0.05) and from one
    # taken relative to the candidate (21 * 0.05 = 1.05).
    def scored(version: int, value: float) -> VersionBundle:
        b = bundle(version, rmse=value)
        metric = b.schema.quality_metric.model_copy(update={"greater_is_better": greater_is_better})
        b.schema = b.schema.model_copy(update={"quality_metric": metric})
        return b

    p = plan(routed(1), {"champion": 2}, {1: scored(1, 20.0), 2: scored(2, new)})
    assert bool(p.blocked) is blocked, p.verdicts
    assert p.champion == (1 if blocked else 2)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_champion_whose_quality_metric_is_not_finite_is_blocked(value: float) -> None:
    # NaN compared with the margin is False either way: it passed the gate as "not worse".
    p = plan(routed(1), {"champion": 2}, {1: bundle(1, rmse=20.0), 2: bundle(2, rmse=value)})
    (verdict,) = p.blocked
    assert verdict.reason is not None and "cannot compare" in verdict.reason
    assert p.champion == 1


def test_the_quality_margin_comes_from_the_settings() -> None:
    bundles = {1: bundle(1, rmse=20.0), 2: bundle(2, rmse=24.0)}
    assert plan(routed(1), {"champion": 2}, bundles).blocked
    wide = PlanSettings(options=OPTIONS, quality_margin=0.25)
    assert not plan(routed(1), {"champion": 2}, bundles, settings=wide).blocked


def test_a_breaking_schema_blocks_a_champion_and_a_challenger() -> None:
    narrowed = bundle(2, rmse=0.5, categories=("a",))
    p = plan(routed(1), {"champion": 2}, {1: bundle(1), 2: narrowed})
    assert p.champion == 1 and p.blocked[0].reason is not None
    assert "schema would break the live contract" in p.blocked[0].reason
    assert "lost categories ['b']" in p.blocked[0].reason
    p = plan(routed(1), {"champion": 1, "challenger": 2}, {1: bundle(1), 2: narrowed})
    assert [(v.alias, v.passed) for v in p.verdicts] == [("challenger", False)]
    assert (p.challenger, p.keep) == (None, [1])


def test_a_forced_version_skips_the_gates() -> None:
    p = plan(routed(1), {"champion": 2}, {1: bundle(1), 2: bundle(2, rmse=9)}, tags={2: {FORCE_TAG: "true"}})
    assert p.verdicts[0].passed and p.verdicts[0].forced and p.champion == 2


def test_a_required_load_test_blocks_even_the_first_champion() -> None:
    strict = PlanSettings(options=OPTIONS, require_load_test=True)
    p = plan(Routing(model_name=MODEL), {"champion": 1}, {1: bundle(1)}, settings=strict)
    assert p.blocked[0].reason is not None and "no passing load test recorded" in p.blocked[0].reason
    assert p.champion is None and p.config is None and p.keep == [] and p.routing_at(NOW) is None
    p = plan(Routing(model_name=MODEL), {"champion": 1}, {1: bundle(1)}, {1: {LOADTEST_STATUS_TAG: "passed"}}, strict)
    assert p.champion == 1
    # Challengers are not load-tested.
    assert plan(routed(1), {"champion": 1, "challenger": 2}, {1: bundle(1), 2: bundle(2)}, settings=strict).challenger


def test_adding_a_challenger_loads_it_beside_the_champion() -> None:
    worse = bundle(2, rmse=5.0)  # challengers are for comparing: no quality gate
    p = plan(routed(1), {"champion": 1, "challenger": 2}, {1: bundle(1), 2: worse})
    assert p.wanted.gated == (("challenger", 2),) and not p.blocked
    assert (p.champion, p.challenger, p.keep, p.new_versions) == (1, 2, [1, 2], [2])
    new = p.routing_at(NOW)
    assert new is not None and (new.challenger, new.challenger_run_id) == (2, "run2")
    assert new.serving_since["challenger"] == NOW and new.serving_since["champion"] != NOW


def test_removing_the_challenger_unloads_it_and_drops_it_from_routing() -> None:
    current = routed(1, challenger=2)
    p = plan(current, {"champion": 1}, {1: bundle(1), 2: bundle(2)})
    assert p.verdicts == () and (p.keep, p.new_versions) == ([1], [])
    assert p.config is not None and "versions: [ 1 ]" in p.config
    new = p.routing_at(NOW)
    assert new is not None and (new.challenger, new.challenger_run_id) == (None, None)
    assert "challenger" not in new.serving_since
    assert p.revert_config() is not None and "versions: [ 1, 2 ]" in (p.revert_config() or "")


def test_rollback_to_the_previous_champion_skips_the_quality_gate() -> None:
    # v1 is worse than v2 on paper, but it served before: a rollback must work.
    p = plan(routed(2, previous=1), {"champion": 1}, {1: bundle(1, rmse=2.0), 2: bundle(2, rmse=1.0)})
    assert p.verdicts[0].passed
    assert (p.champion, p.previous, p.keep, p.new_versions) == (1, 2, [1, 2], [])
    new = p.routing_at(NOW)
    assert new is not None and (new.champion, new.previous_champion) == (1, 2)


def test_rollback_to_the_previous_champion_passes_every_gate_even_against_a_champion_that_added_a_field() -> None:
    # issue 14 item 4: v2 added a nullable input; going back to v1 "drops" it, which the schema gate
    # calls breaking when v1 is gated against the live v2. A rollback must always work.
    v2 = bundle(2)
    added = NumericFeature(name="z", minimum=0, maximum=1, example=0.5, nullable=True)
    v2.schema = v2.schema.model_copy(update={"features": [*v2.schema.features, added]})
    strict = PlanSettings(options=OPTIONS, require_load_test=True)  # v1 has no load-test tag either
    p = plan(routed(2, previous=1), {"champion": 1}, {1: bundle(1, rmse=2.0), 2: v2}, settings=strict)
    assert [(v.version, v.passed) for v in p.verdicts] == [(1, True)]
    assert (p.champion, p.previous) == (1, 2)
    # Any other version is still gated against the live champion.
    p = plan(routed(2, previous=1), {"champion": 3}, {1: bundle(1), 2: v2, 3: bundle(3)})
    assert p.blocked and "schema would break the live contract" in (p.blocked[0].reason or "")


def test_rollback_takes_its_target_from_the_champion_history_not_from_routing() -> None:
    # issue 14 item 7: v3 promoted (alias moved) but not applied yet: routing.json still says 2,
    # previous 1. Rolling back undoes the promotion of v3 (-> 2), it does not go back two (-> 1).
    assert rollback_target([1, 2], 3, routed(2, previous=1)) == 2
    assert rollback_target([1, 2, 3], 3, routed(3, previous=2)) == 2  # applied: one back
    assert rollback_target([1, 2, 3, 2], 2, routed(2, previous=3)) == 3  # a rollback undone by another
    assert rollback_target([], 2, routed(2, previous=1)) == 1  # no history kept yet: routing.json
    assert rollback_target([2], 2, routed(2)) is None
    assert rollback_target([], None, None) is None


def test_changed_serving_options_need_a_reload_and_are_routed_after_it() -> None:
    current = routed(1)
    bigger = PlanSettings(options=ServingOptions(max_batch_size=32))
    p = plan(current, {"champion": 1}, {1: bundle(1)}, settings=bigger)
    assert p.config is not None and "max_batch_size: 32" in p.config and p.new_versions == []
    new = p.routing_at(NOW)
    assert new is not None and new.serving == bigger.options and new.champion == 1
    # The revert restores the config the gateway was told about.
    assert "max_batch_size: 64" in (p.revert_config() or "")

    def ready() -> Iterator[set[int]]:
        raise AssertionError("replicas asked although the config changed")
        yield set()

    assert p.needs_load(True, ready())
    # A config already on disk with the new options (written by a pass that stopped before its
    # load) still needs the load: routing.json says Triton was last seen with the old options.
    assert p.needs_load(False, ready())
    same = plan(current, {"champion": 1}, {1: bundle(1)})
    assert not same.needs_load(False, iter([{1}, {1, 7}]))
    assert same.needs_load(False, iter([{1}, set()]))


def test_routing_written_before_serving_options_were_recorded_is_rewritten_once() -> None:
    current = routed(1).model_copy(update={"serving": None})
    p = plan(current, {"champion": 1}, {1: bundle(1)})
    new = p.routing_at(NOW)
    assert new is not None and new.serving == OPTIONS and new.serving_since == current.serving_since
    assert plan(routed(1), {"champion": 1}, {1: bundle(1)}).routing_at(NOW) is None


def test_a_missing_bundle_fails_the_plan_with_the_version() -> None:
    with pytest.raises(BundleMissing, match="m v2"):
        plan(routed(1), {"champion": 2}, {1: bundle(1)})
    # The previous champion is needed again once the new champion is blocked.
    with pytest.raises(BundleMissing, match="m v1") as err:
        plan(routed(2, previous=1), {"champion": 3}, {2: bundle(2), 3: bundle(3, rmse=9)})
    assert isinstance(err.value, OSError)  # classified like the unreadable file it stands for


def test_a_bundle_is_read_once_and_its_reference_only_when_needed(tmp_path: Path) -> None:
    b = bundle(1)
    (tmp_path / "schema.json").write_text(b.schema.model_dump_json())
    (tmp_path / "manifest.json").write_text(b.manifest.model_dump_json())
    read = VersionBundle.read(tmp_path, 1)
    assert (read.schema, read.manifest.run_id, read.loaded_reference) == (b.schema, "run1", None)
    assert b.loaded_reference is not None
    (tmp_path / "reference.json").write_text(b.loaded_reference.model_dump_json())
    assert read.reference == b.loaded_reference
    (tmp_path / "reference.json").unlink()
    assert read.reference == b.loaded_reference  # kept for the rest of the pass


# -- the plan applied, with fake MLflow and Triton ------------------------------------------------


class FakeMlflow:
    """The calls of MlflowClient the controller makes."""

    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}
        self.version_tags: dict[str, dict[str, str]] = {}
        self.model_tags: dict[str, str] = {}
        self.tag_writes = 0

    def get_registered_model(self, name: str) -> Any:
        return SimpleNamespace(aliases=dict(self.aliases), tags=dict(self.model_tags))

    def get_model_version(self, name: str, version: str) -> Any:
        return SimpleNamespace(run_id=f"run{version}", tags=dict(self.version_tags.get(version, {})))

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self.tag_writes += 1
        self.version_tags.setdefault(version, {})[key] = value

    def delete_model_version_tag(self, name: str, version: str, key: str) -> None:
        self.version_tags.get(version, {}).pop(key, None)

    def set_registered_model_tag(self, name: str, key: str, value: str) -> None:
        self.model_tags[key] = value


class FakeTriton:
    """A Triton replica that loads whatever config.pbtxt says and can fail a smoke test."""

    def __init__(self, url: str, root: Path) -> None:
        self.url, self.root = url, root
        self.loaded: set[int] = set()
        self.loads = 0
        self.smoke_error = 0.0
        self.smoke_raises: BaseException | None = None
        self.smokes: list[int] = []
        self.fail_load = False
        self.load_raises: BaseException | None = None

    def load(self, model: str) -> None:
        from deployer.triton_control import TritonControlError

        if self.load_raises is not None:
            raise self.load_raises
        self.loads += 1
        text = (self.root / model / "config.pbtxt").read_text()
        versions = text.split("versions: [ ")[1].split(" ]")[0]
        if self.fail_load:
            raise TritonControlError(f"Triton at {self.url} failed to load {model}: boom")
        self.loaded = {int(v) for v in versions.split(", ")}

    def ready_versions(self, model: str) -> set[int]:
        return set(self.loaded)

    def smoke_test(self, model: str, version: int, schema: ModelSchema, reference: Reference) -> float:
        from deployer.triton_control import TritonControlError

        self.smokes.append(version)
        if self.smoke_raises is not None:
            raise self.smoke_raises
        if self.smoke_error > reference.tolerance:
            raise TritonControlError(f"{model} v{version} on {self.url} differs from its reference outputs")
        return self.smoke_error

    def close(self) -> None:
        pass


@pytest.fixture
def controller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    from deployer.settings import RegistrySettings
    from deployer.sync import SyncController

    root = tmp_path / "repo"
    for v in (1, 2):
        b = bundle(v)
        folder = root / MODEL / str(v)
        folder.mkdir(parents=True)
        for name in BUNDLE_FILES:
            (folder / name).write_text("{}")
        (folder / "schema.json").write_text(b.schema.model_dump_json())
        (folder / "manifest.json").write_text(b.manifest.model_dump_json())
        assert b.loaded_reference is not None
        (folder / "reference.json").write_text(b.loaded_reference.model_dump_json())
    settings = RegistrySettings(
        tracking_uri="http://127.0.0.1:9", model_repository=root, triton_url="a:1,b:2", gpu="no"
    )
    c = SyncController(settings)
    c.client = FakeMlflow()
    c._tritons = {url: FakeTriton(url, root) for url in ("a:1", "b:2")}
    return c


def test_a_pass_records_each_load_and_smoke_test_per_replica_and_routes_with_the_options(controller: Any) -> None:
    controller.client.aliases = {"champion": "1"}
    controller._tritons["b:2"].smoke_error = 1e-6
    outcome = controller.run_once([MODEL])[0]
    assert outcome.error is None and outcome.changed
    steps = [(s.step, s.ok, s.version, s.triton) for s in outcome.steps]
    assert steps == [
        ("gate", True, 1, None),
        ("config", True, None, None),
        ("load", True, 1, "a:1"),
        ("load", True, 1, "b:2"),
        ("smoke", True, 1, "a:1"),
        ("smoke", True, 1, "b:2"),
        ("route", True, None, None),
    ]
    assert [s.max_error for s in outcome.steps if s.step == "smoke"] == [0.0, 1e-6]
    assert outcome.smoke_passed(1, ["a:1", "b:2"])
    written = Routing.read(controller.root / MODEL)
    assert written is not None and written.champion == 1 and written.serving == controller.options
    assert controller.client.version_tags["1"][SYNC_STATUS_TAG] == "serving"

    again = controller.run_once([MODEL])[0]
    assert not again.changed and [s.step for s in again.steps] == ["config", "route"]
    assert {t.loads for t in controller._tritons.values()} == {1}


def test_a_failed_smoke_test_marks_the_version_and_reverts_to_what_was_served(controller: Any) -> None:
    controller.client.aliases = {"champion": "1"}
    controller.run_once([MODEL])
    controller.client.aliases = {"champion": "1", "challenger": "2"}
    controller._tritons["b:2"].smoke_error = 1.0
    outcome = controller.run_once([MODEL])[0]
    assert outcome.error is not None and "v2 on b:2 differs" in outcome.error and not outcome.changed
    failed = outcome.failed_steps()
    assert [(s.step, s.version, s.triton) for s in failed] == [("smoke", 2, "b:2")]
    assert not outcome.smoke_passed(2, ["a:1", "b:2"])
    assert [(s.step, s.ok, s.triton) for s in outcome.steps[-2:]] == [("revert", True, "a:1"), ("revert", True, "b:2")]
    assert controller.client.version_tags["2"][SYNC_STATUS_TAG].startswith("failed: ")
    written = Routing.read(controller.root / MODEL)
    assert written is not None and (written.champion, written.challenger) == (1, None)
    assert all(t.loaded == {1} for t in controller._tritons.values())
    assert "versions: [ 1 ]" in (controller.root / MODEL / "config.pbtxt").read_text()


def test_a_failed_load_marks_the_new_version_and_reloads_the_old_set_everywhere(controller: Any) -> None:
    controller.client.aliases = {"champion": "1"}
    controller.run_once([MODEL])
    controller.client.aliases = {"champion": "2"}
    controller.client.version_tags["2"] = {FORCE_TAG: "true"}
    controller._tritons["a:1"].fail_load = True
    outcome = controller.run_once([MODEL])[0]
    assert outcome.error == "Triton at a:1 failed to load m: boom"
    assert [(s.step, s.triton) for s in outcome.failed_steps()] == [("load", "a:1"), ("revert", "a:1")]
    assert not any(s.step == "smoke" for s in outcome.steps)
    assert controller.client.version_tags["2"][SYNC_STATUS_TAG] == "failed: Triton at a:1 failed to load m: boom"
    written = Routing.read(controller.root / MODEL)
    assert written is not None and written.champion == 1
    assert "versions: [ 1 ]" in (controller.root / MODEL / "config.pbtxt").read_text()


# -- issue 14: a version is routed only after its smoke test passed on every replica ---------------


def steps_of(outcome: Any) -> list[tuple[str, bool, int | None, str | None]]:
    return [(s.step, s.ok, s.version, s.triton) for s in outcome.steps]


def test_a_smoke_step_that_raises_any_exception_reverts_and_the_next_pass_tests_before_routing(
    controller: Any,
) -> None:
    controller.client.aliases = {"champion": "1"}
    controller.run_once([MODEL])
    controller.client.aliases = {"champion": "1", "challenger": "2"}
    controller._tritons["b:2"].smoke_raises = ValueError("cannot reshape array")  # not a TritonControlError
    outcome = controller.run_once([MODEL])[0]
    assert outcome.error is not None and "ValueError: cannot reshape array" in outcome.error
    assert [s.step for s in outcome.steps[-2:]] == ["revert", "revert"]
    assert "versions: [ 1 ]" in (controller.root / MODEL / "config.pbtxt").read_text()
    assert all(t.loaded == {1} for t in controller._tritons.values())
    assert controller.client.version_tags["2"][SYNC_STATUS_TAG] == "failed: ValueError: cannot reshape array"
    written = Routing.read(controller.root / MODEL)
    assert written is not None and written.challenger is None

    controller._tritons["b:2"].smoke_raises = None
    controller.clock = lambda: 1e9  # past the failure's backoff
    again = controller.run_once([MODEL])[0]
    assert again.error is None
    assert steps_of(again)[-3:] == [("smoke", True, 2, "a:1"), ("smoke", True, 2, "b:2"), ("route", True, None, None)]
    written = Routing.read(controller.root / MODEL)
    assert written is not None and written.challenger == 2


def test_a_controller_killed_between_load_and_smoke_leaves_a_version_the_next_controller_tests(
    controller: Any,
) -> None:
    from deployer.sync import SyncController

    controller.client.aliases = {"champion": "1"}
    controller.run_once([MODEL])
    controller.client.aliases = {"champion": "2"}
    controller._tritons["a:1"].smoke_raises = KeyboardInterrupt()  # the process dies in the smoke step
    with pytest.raises(KeyboardInterrupt):
        controller.run_once([MODEL])
    assert all(t.loaded == {1, 2} for t in controller._tritons.values())  # loaded, never tested
    written = Routing.read(controller.root / MODEL)
    assert written is not None and written.champion == 1

    restarted = SyncController(controller.settings)
    restarted.client, restarted._tritons = controller.client, controller._tritons
    controller._tritons["a:1"].smoke_raises = None
    controller._tritons["b:2"].smoke_error = 1.0  # v2 is in fact wrong on b:2
    outcome = restarted.run_once([MODEL])[0]
    assert ("smoke", False, 2, "b:2") in steps_of(outcome)
    assert not any(s.step == "route" for s in outcome.steps)
    written = Routing.read(restarted.root / MODEL)
    assert written is not None and written.champion == 1, "v2 was routed without a passing smoke test"

    controller._tritons["b:2"].smoke_error = 0.0
    restarted.clock = lambda: 1e9
    outcome = restarted.run_once([MODEL])[0]
    assert outcome.error is None and outcome.smoke_passed(2, ["a:1", "b:2"])
    written = Routing.read(restarted.root / MODEL)
    assert written is not None and (written.champion, written.previous_champion) == (2, 1)


# -- issue 14: a failed version backs off instead of being reloaded every pass ----------------------


def test_a_failed_version_is_not_reloaded_nor_retagged_every_pass_until_its_backoff_ends(controller: Any) -> None:
    now = [1000.0]
    controller.clock = lambda: now[0]
    controller.client.aliases = {"champion": "1"}
    controller.run_once([MODEL])
    controller.client.aliases = {"champion": "2"}
    controller.client.version_tags["2"] = {FORCE_TAG: "true"}
    controller._tritons["a:1"].fail_load = True
    first = controller.run_once([MODEL])[0]
    assert first.error == "Triton at a:1 failed to load m: boom"
    loads, writes = controller._tritons["a:1"].loads, controller.client.tag_writes

    for _ in range(5):
        now[0] += 5
        held = controller.run_once([MODEL])[0]
        assert held.error is not None and "retried 30 s after failure 1" in held.error and "boom" in held.error
        assert not any(s.step in ("load", "smoke", "revert") for s in held.steps)
    assert (controller._tritons["a:1"].loads, controller.client.tag_writes) == (loads, writes)

    now[0] = 1000.0 + 31  # past the first backoff (30 s): one retry, which fails the same way
    retried = controller.run_once([MODEL])[0]
    assert retried.error == "Triton at a:1 failed to load m: boom"
    assert controller._tritons["a:1"].loads > loads
    assert controller.client.tag_writes == writes, "the same failure is not tagged again"
    loads = controller._tritons["a:1"].loads
    now[0] += 59  # the second backoff is 60 s
    assert "retried 60 s after failure 2" in (controller.run_once([MODEL])[0].error or "")
    assert controller._tritons["a:1"].loads == loads

    controller._tritons["a:1"].fail_load = False
    controller.client.aliases = {"champion": "1", "challenger": "2"}  # the alias moved: retried at once
    moved = controller.run_once([MODEL])[0]
    assert moved.error is None and moved.smoke_passed(2, ["a:1", "b:2"])
    written = Routing.read(controller.root / MODEL)
    assert written is not None and (written.champion, written.challenger) == (1, 2)


def test_a_failed_version_is_retried_at_once_when_its_bundle_changes(controller: Any) -> None:
    import os

    controller.clock = lambda: 0.0
    controller.client.aliases = {"champion": "1"}
    controller.run_once([MODEL])
    controller.client.aliases = {"champion": "1", "challenger": "2"}
    controller._tritons["b:2"].smoke_error = 1.0
    assert "differs" in (controller.run_once([MODEL])[0].error or "")
    assert "retried 30 s after failure 1" in (controller.run_once([MODEL])[0].error or "")
    controller._tritons["b:2"].smoke_error = 0.0
    manifest = controller.root / MODEL / "2" / "manifest.json"
    os.utime(manifest, ns=(1, 1))  # the bundle was rebuilt
    assert controller.run_once([MODEL])[0].error is None


# -- issue 14: a force is for one promotion -------------------------------------------------------


def test_a_force_is_consumed_once_the_forced_version_is_served(controller: Any) -> None:
    narrowed = bundle(2, rmse=9.0, categories=("a",))  # breaks the contract and is worse
    (controller.root / MODEL / "2" / "manifest.json").write_text(narrowed.manifest.model_dump_json())
    (controller.root / MODEL / "2" / "schema.json").write_text(narrowed.schema.model_dump_json())
    controller.client.aliases = {"champion": "1"}
    controller.run_once([MODEL])
    controller.client.aliases = {"champion": "1", "challenger": "2"}
    controller.client.version_tags["2"] = {FORCE_TAG: "true"}  # `modelops promote --force --alias challenger`
    forced = controller.run_once([MODEL])[0]
    assert forced.error is None and forced.steps[0].reason == "forced past the gates"
    assert FORCE_TAG not in controller.client.version_tags["2"]
    status = controller.client.version_tags["2"][SYNC_STATUS_TAG]
    assert status.startswith("serving (forced past the gates as challenger at ")

    controller.client.aliases = {"champion": "2"}  # a later promotion of the same version is gated again
    again = controller.run_once([MODEL])[0]
    assert again.error is not None and "schema would break the live contract" in again.error
    written = Routing.read(controller.root / MODEL)
    assert written is not None and written.champion == 1


# -- issue 14 item 16: the gates through the controller's own settings ------------------------------


def test_require_load_test_from_the_environment_blocks_a_champion_until_a_load_test_passed(
    controller: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deployer.settings import RegistrySettings
    from deployer.sync import SyncController

    monkeypatch.setenv("MODELOPS_REGISTRY_REQUIRE_LOAD_TEST", "true")
    monkeypatch.setenv("MODELOPS_REGISTRY_QUALITY_MARGIN", "0.25")
    settings = RegistrySettings(
        tracking_uri="http://127.0.0.1:9", model_repository=controller.root, triton_url="a:1,b:2", gpu="no"
    )
    assert settings.require_load_test and settings.quality_margin == 0.25
    strict = SyncController(settings)
    strict.client, strict._tritons = controller.client, controller._tritons
    strict.client.aliases = {"champion": "1"}
    blocked = strict.run_once([MODEL])[0]
    assert blocked.error is not None and "no passing load test recorded" in blocked.error
    assert "modelops bench --model m --version 1" in blocked.error
    assert Routing.read(strict.root / MODEL) is None and all(t.loads == 0 for t in strict._tritons.values())
    assert strict.client.version_tags["1"][SYNC_STATUS_TAG].startswith("blocked: no passing load test")

    strict.client.version_tags["1"][LOADTEST_STATUS_TAG] = "failed"
    assert "loadtest_status=failed" in (strict.run_once([MODEL])[0].error or "")
    strict.client.version_tags["1"][LOADTEST_STATUS_TAG] = "passed"
    served = strict.run_once([MODEL])[0]
    assert served.error is None and served.smoke_passed(1, ["a:1", "b:2"])
    written = Routing.read(strict.root / MODEL)
    assert written is not None and written.champion == 1


def test_modelops_rollback_undoes_a_promotion_the_controller_has_not_applied_yet(
    controller: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    import mlflow

    from modelops.cli import main
    from modelspec.tags import HISTORY_TAG

    fake = controller.client
    fake.aliases = {"champion": "1"}
    controller.run_once([MODEL])
    fake.aliases = {"champion": "2"}
    controller.run_once([MODEL])
    assert json.loads(fake.model_tags[HISTORY_TAG]) == [1, 2]
    fake.aliases = {"champion": "3"}  # promoted; sync has not applied it (routing.json: 2, previous 1)
    fake.set_registered_model_alias = lambda name, alias, version: fake.aliases.__setitem__(alias, version)
    monkeypatch.setattr(mlflow, "MlflowClient", lambda *a, **k: fake)
    monkeypatch.setenv("MODELOPS_STACK_MODEL_REPOSITORY", str(controller.root))
    assert main(["rollback", MODEL, "--wait", "0"]) == 0
    assert fake.aliases["champion"] == "2", "rollback went back two versions"


def test_new_serving_options_written_by_a_pass_killed_before_its_load_are_loaded_before_they_are_routed(
    controller: Any,
) -> None:
    from deployer.sync import SyncController

    controller.client.aliases = {"champion": "1"}
    controller.run_once([MODEL])
    smaller = ServingOptions(max_batch_size=32)
    controller.options = smaller
    controller._tritons["a:1"].load_raises = KeyboardInterrupt()  # killed after writing config.pbtxt
    with pytest.raises(KeyboardInterrupt):
        controller.run_once([MODEL])
    assert "max_batch_size: 32" in (controller.root / MODEL / "config.pbtxt").read_text()
    controller._tritons["a:1"].load_raises = None
    loads = {url: t.loads for url, t in controller._tritons.items()}

    restarted = SyncController(controller.settings)
    restarted.client, restarted._tritons, restarted.options = controller.client, controller._tritons, smaller
    outcome = restarted.run_once([MODEL])[0]
    assert outcome.error is None
    assert [s.step for s in outcome.steps][:3] == ["config", "load", "load"], "routed options Triton never loaded"
    assert all(t.loads == loads[url] + 1 for url, t in restarted._tritons.items())
    written = Routing.read(restarted.root / MODEL)
    assert written is not None and written.serving == smaller


def test_a_failed_load_without_a_new_version_backs_off_too(controller: Any) -> None:
    now = [0.0]
    controller.clock = lambda: now[0]
    controller.client.aliases = {"champion": "1"}
    controller.run_once([MODEL])
    controller.options = ServingOptions(max_batch_size=32)
    controller._tritons["a:1"].fail_load = True
    assert controller.run_once([MODEL])[0].error == "Triton at a:1 failed to load m: boom"
    loads = controller._tritons["b:2"].loads
    held = controller.run_once([MODEL])[0]
    assert held.error is not None and "retried 30 s after failure 1" in held.error
    assert controller._tritons["b:2"].loads == loads and held.steps == []
    now[0] = 31.0
    controller._tritons["a:1"].fail_load = False
    assert controller.run_once([MODEL])[0].error is None
    written = Routing.read(controller.root / MODEL)
    assert written is not None and written.serving == controller.options
