"""The ``modelops bench`` sub-command: a gated load test, or ``--compare`` of serving paths.

Defaults: where the stack's servers are. ``modelops bench`` gets them from the launcher's
settings; ``python -m benchmarks.cli bench ...`` (the same command without the rest of the CLI)
reads the same environment variables itself: MODELOPS_STACK_HOST, MODELOPS_STACK_GATEWAY_PORT,
MODELOPS_STACK_TRITON_HTTP_PORT, MODELOPS_STACK_MLFLOW_PORT (or MODELOPS_REGISTRY_TRACKING_URI),
MODELOPS_STACK_MODEL_REPOSITORY and MODELOPS_STACK_STATE_DIR (the old MODELOPS_<NAME> names too,
with a warning). Against ``modelops up`` no option is needed.

Exit codes: 0 every budget held (or the comparison ran), 1 a budget broke (or, with
``--enforce-targets``, a comparison target was missed), 2 the benchmark could not run.
"""
# The launcher adds this sub-command with add_bench_parser(sub, defaults=...), passing a
# StackDefaults of its own settings: benchmarks/ sits below the launcher and never imports it.

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("modelops.bench")

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_ERROR = 2


STACK_ENV_PREFIX = "MODELOPS_STACK_"
"""Prefix of the stack's environment variables (``modelops.settings.StackSettings`` reads the same)."""
DEPRECATED_STACK_ENV_PREFIX = "MODELOPS_"
"""Prefix the stack's variables had before; still read, after the new names, with a warning."""


class StackDefaultsError(ValueError):
    """A stack environment variable the defaults are read from has an invalid value."""


@dataclass(frozen=True)
class StackDefaults:
    """Where the stack's servers are: what ``bench`` uses for an option that is not given."""

    gateway_url: str
    triton_url: str
    tracking_uri: str
    model_repository: Path
    reports_root: Path
    """Reports go to ``<reports_root>/<model>-<UTC time>`` unless ``--report-dir`` says otherwise."""

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> StackDefaults:
        """The defaults ``modelops up`` would use, from the stack's variables (``MODELOPS_STACK_*``).

        The same names and defaults as ``modelops.settings.StackSettings`` (a unit test holds
        them equal), read here so that ``benchmarks`` needs nothing from the launcher.

        Raises:
            StackDefaultsError: a port variable is not a port number.
        """
        env = {k.upper(): v for k, v in (os.environ if environ is None else environ).items()}

        def get(field: str, default: str) -> str:
            new, old = f"{STACK_ENV_PREFIX}{field.upper()}", f"{DEPRECATED_STACK_ENV_PREFIX}{field.upper()}"
            if new in env:
                return env[new]
            if old in env:
                log.warning("%s is deprecated; rename it %s", old, new)
                return env[old]
            return default

        def port(field: str, default: int) -> int:
            text = get(field, str(default))
            try:
                value = int(text)
            except ValueError:
                value = 0
            if not 1 <= value <= 65535:
                raise StackDefaultsError(f"{STACK_ENV_PREFIX}{field.upper()}={text!r} is not a port (1-65535)")
            return value

        host = get("host", "127.0.0.1")
        tracking = env.get("MODELOPS_REGISTRY_TRACKING_URI", f"http://{host}:{port('mlflow_port', 5000)}")
        return cls(
            gateway_url=f"http://{host}:{port('gateway_port', 8080)}",
            triton_url=f"http://{host}:{port('triton_http_port', 8000)}",
            tracking_uri=tracking,
            model_repository=Path(get("model_repository", "model_repository")),
            reports_root=Path(get("state_dir", ".modelops")) / "bench",
        )


def _csv_ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected positive integers")
    return values


def _csv_variants(text: str) -> tuple[str, ...]:
    from benchmarks.compare_results import VARIANTS

    values = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = [v for v in values if v not in VARIANTS]
    if unknown or not values:
        raise argparse.ArgumentTypeError(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    return values


def add_bench_parser(subparsers: Any, defaults: Callable[[], StackDefaults] | None = None) -> None:
    """Add the ``bench`` sub-command to a ``modelops`` sub-parser collection.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers()`` returned.
        defaults: gives where the stack's servers are, called only when ``bench`` runs (so a bad
            variable does not break the other sub-commands); None reads the environment
            (:meth:`StackDefaults.from_environment`).
    """
    b = subparsers.add_parser(
        "bench",
        help="load-test the gateway against the model's budgets (--compare: serving paths side by side)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = b.add_argument_group("what to load")
    where.add_argument("--model", help="model to load (default: the gateway's default model)")
    where.add_argument("--gateway-url", help="gateway base URL (default: the stack's, MODELOPS_STACK_GATEWAY_PORT)")
    where.add_argument(
        "--budgets", type=Path, help="budgets YAML (default: benchmarks/budgets/<model>.yaml)", metavar="PATH"
    )
    load = b.add_argument_group("load (defaults: the budgets file's `load`)")
    load.add_argument("--users", type=int, help="concurrent closed-loop users")
    load.add_argument("--spawn-rate", type=float, help="users started per second")
    load.add_argument("--duration", type=float, help="seconds of load")
    load.add_argument("--warmup", type=float, help="first seconds left out of the statistics")
    load.add_argument("--records-per-request", type=int, help="records in each /predict request")
    load.add_argument(
        "--workers", type=int, default=1, help="processes sending load (more when one core is not enough)"
    )
    load.add_argument(
        "--load-engine",
        choices=("locust", "asyncio"),
        help="load generator: locust (default of the gate) or asyncio (default of --compare: raw keep-alive "
        "HTTP/1.1, several times less client CPU per request, for when it shares the cores with the servers)",
    )
    load.add_argument("--seed", type=int, default=0, help="seed of the generated records")
    out = b.add_argument_group("results")
    out.add_argument("--report-dir", type=Path, help="where reports go (default: <state dir>/bench/<model>-<time>)")
    out.add_argument(
        "--record",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="record the result on the MLflow model version (tags, metrics, report artifact)",
    )
    out.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: MODELOPS_REGISTRY_TRACKING_URI or the stack's)"
    )
    cmp = b.add_argument_group("comparison (--compare)")
    cmp.add_argument("--compare", action="store_true", help="compare gateway, Triton, Triton without batching, mlflow")
    cmp.add_argument(
        "--triton-url",
        help="Triton HTTP base URL (default: the stack's, MODELOPS_STACK_TRITON_HTTP_PORT); the gate uses it only to "
        "account Triton's CPU",
    )
    cmp.add_argument(
        "--model-repository",
        type=Path,
        help="the stack's model repository, read only (MODELOPS_STACK_MODEL_REPOSITORY)",
    )
    cmp.add_argument(
        "--targets", type=Path, help="targets YAML (default: benchmarks/targets/compare.yaml)", metavar="PATH"
    )
    cmp.add_argument("--variants", type=_csv_variants, help="comma-separated subset of the variants")
    cmp.add_argument("--steps", type=_csv_ints, help="concurrent users of each load step (default 1,8,16,32,64,128)")
    cmp.add_argument("--step-duration", type=float, help="seconds per load step (default 8)")
    cmp.add_argument("--fixed-rps", type=float, help="request rate of the fixed-load latency run (default 50)")
    cmp.add_argument("--fixed-duration", type=float, help="seconds of the fixed-load run (default 10)")
    cmp.add_argument("--records-sweep", type=_csv_ints, help="records per request to sweep (default 1,4,16,64)")
    cmp.add_argument("--sweep-users", type=int, help="users of the records-per-request sweep (default 16)")
    cmp.add_argument("--p95-budget-ms", type=float, help="p95 budget for 'throughput at budget' (default: budgets)")
    cmp.add_argument("--rounds", type=int, help="repeat every measurement, rotating the order; report medians")
    cmp.add_argument("--mlflow-workers", type=int, default=1, help="workers of mlflow models serve (its default 1)")
    cmp.add_argument("--enforce-targets", action="store_true", help="exit 1 when a comparison target is missed")
    b.set_defaults(fn=cmd_bench, stack_defaults=defaults or StackDefaults.from_environment)


def _stack_defaults(args: argparse.Namespace, stack: StackDefaults) -> tuple[str, str, str, Path, Path]:
    """gateway URL, Triton URL, tracking URI, model repository, reports root (options win)."""
    gateway = args.gateway_url or stack.gateway_url
    triton = args.triton_url or stack.triton_url
    tracking = args.tracking_uri or stack.tracking_uri
    repository = args.model_repository or stack.model_repository
    return gateway.rstrip("/"), triton.rstrip("/"), tracking, repository, stack.reports_root


def cmd_bench(args: argparse.Namespace) -> int:
    """Run ``modelops bench`` (see the module docstring for exit codes)."""
    from benchmarks.budget import BudgetError, default_budgets_path, load_budgets
    from benchmarks.compare_targets import TargetsError
    from benchmarks.gate import BenchError, default_report_dir, discover
    from benchmarks.loadrun import LoadRunFailed
    from benchmarks.peers import ServerFailed

    try:
        stack = args.stack_defaults()
    except StackDefaultsError as exc:
        log.error("%s", exc)
        return EXIT_ERROR
    gateway, triton, tracking, repository, reports_root = _stack_defaults(args, stack)
    try:
        model = args.model
        if model is None and args.budgets is None:
            model = discover(gateway, None).name
        budgets_path = args.budgets or default_budgets_path(model)
        budgets = load_budgets(budgets_path)
        report_dir = args.report_dir or default_report_dir(reports_root, model or budgets.model)
        if args.compare:
            return _compare(args, gateway, triton, tracking, repository, report_dir, budgets)
        return _gate(args, gateway, triton, tracking, report_dir, budgets, budgets_path)
    except (BudgetError, TargetsError, BenchError, LoadRunFailed, ServerFailed) as exc:
        log.error("%s", exc)
        return EXIT_ERROR


def _gate(
    args: argparse.Namespace,
    gateway: str,
    triton: str,
    tracking: str,
    report_dir: Path,
    budgets: Any,
    budgets_path: Path,
) -> int:
    from benchmarks.gate import apply_overrides, run_gate, verdict_text
    from benchmarks.recording import RecordingFailed, record_on_version

    budgets = apply_overrides(
        budgets,
        users=args.users,
        spawn_rate=args.spawn_rate,
        duration_s=args.duration,
        warmup_s=args.warmup,
        records_per_request=args.records_per_request,
    )
    outcome = run_gate(
        gateway_url=gateway,
        budgets=budgets,
        budgets_path=budgets_path,
        report_dir=report_dir,
        model=args.model,
        processes=args.workers,
        seed=args.seed,
        triton_url=triton,
        **({"load_engine": args.load_engine} if args.load_engine else {}),
    )
    sys.stdout.write(verdict_text(outcome) + "\n")
    if args.record:
        try:
            record_on_version(tracking, outcome.summary, [*outcome.files, budgets_path])
        except RecordingFailed as exc:
            log.error("%s", exc)
            return EXIT_FAILED if not outcome.passed else EXIT_ERROR
    return EXIT_PASSED if outcome.passed else EXIT_FAILED


def _compare(
    args: argparse.Namespace,
    gateway: str,
    triton: str,
    tracking: str,
    repository: Path,
    report_dir: Path,
    budgets: Any,
) -> int:
    from benchmarks.compare import run_compare
    from benchmarks.compare_report import terminal_report, write_reports
    from benchmarks.compare_results import CompareOptions

    given: dict[str, Any] = {
        "variants": args.variants,
        "steps": args.steps,
        "step_s": args.step_duration,
        "fixed_rps": args.fixed_rps,
        "fixed_s": args.fixed_duration,
        "records_sweep": args.records_sweep,
        "sweep_users": args.sweep_users,
        "rounds": args.rounds,
        "load_engine": args.load_engine,
        "targets_path": args.targets,
    }
    opts = CompareOptions(
        gateway_url=gateway,
        triton_url=triton,
        tracking_uri=tracking,
        report_dir=report_dir,
        model_repository=repository if repository.is_dir() else None,
        model=args.model,
        p95_budget_ms=args.p95_budget_ms or budgets.latency_ms.p95 or 60.0,
        max_error_ratio=budgets.max_error_ratio,
        processes=args.workers,
        mlflow_workers=args.mlflow_workers,
        seed=args.seed,
        **{k: v for k, v in given.items() if v is not None},
    )
    outcome = run_compare(opts)
    paths = write_reports(outcome, _command_line())
    sys.stdout.write(terminal_report(outcome) + f"\nreport: {paths['html']}\n")
    missed = [t.name for t in outcome.targets if t.met is False]
    if missed:
        log.warning("targets missed: %s", "; ".join(missed))
    return EXIT_FAILED if (args.enforce_targets and missed) else EXIT_PASSED


def _command_line() -> str:
    """How this run was invoked, for the report (``modelops bench ...``)."""
    argv = sys.argv[1:]
    start = argv.index("bench") if "bench" in argv else 0
    return "modelops " + shlex.join(argv[start:])


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.cli bench ...``: the sub-command on its own."""
    parser = argparse.ArgumentParser(prog="modelops")
    parser.add_argument("-v", "--verbose", action="store_true")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "urllib3", "mlflow", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
