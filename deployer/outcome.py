"""What one sync pass did: a record per step, per version and per Triton replica.

:class:`deployer.sync.SyncController` appends a :class:`StepRecord` to the pass's
:class:`SyncOutcome` as each step of its plan (:class:`deployer.plan.SyncPlan`) is applied, so
the outcome says which version was loaded and smoke-tested (with its largest error) on which
replica, and which step failed and why.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from deployer.plan import SyncPlan
    from modelspec import Routing

StepName = Literal["materialize", "gate", "config", "load", "smoke", "route", "revert"]


@dataclass(frozen=True)
class StepRecord:
    """The outcome of one step of a pass, for one version and/or one Triton replica."""

    step: StepName
    ok: bool
    version: int | None = None
    """None: the step concerns the model as a whole (its config, its load on a replica, its routing)."""
    triton: str | None = None
    """host:port of the replica; None for a step that concerns no replica."""
    max_error: float | None = None
    """smoke: the largest absolute difference from the reference outputs."""
    reason: str = ""
    """Why it failed, or a note on what it did."""


@dataclass
class SyncOutcome:
    """What one reconcile pass of one model did."""

    model: str
    changed: bool = False
    routing: Routing | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    """Each step applied, in order: gates, config, loads and smoke tests per replica, routing."""
    plan: SyncPlan | None = None
    """What the pass decided to do; None when it stopped before deciding."""

    def record(self, step: StepRecord) -> None:
        """Append the outcome of one step."""
        self.steps.append(step)

    def smoke_passed(self, version: int, tritons: Iterable[str]) -> bool:
        """Whether this pass smoke-tested ``version`` successfully on every replica in ``tritons``."""
        passed = {s.triton for s in self.steps if s.step == "smoke" and s.ok and s.version == version}
        return set(tritons) <= passed

    def failed_steps(self) -> list[StepRecord]:
        """The steps that failed, in order."""
        return [s for s in self.steps if not s.ok]
