"""The ``modelops`` command line.

``modelops up`` runs the embedded stack in the foreground; the other commands act on a running
one (its MLflow and Triton) through the same settings (``MODELOPS_STACK_*``,
:class:`modelops.settings.StackSettings`).

``modelops bench`` is there only where the ``benchmarks`` package is installed: the gateway and
sync images copy neither it nor its dependencies, and their ``modelops`` must still start.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelops.settings import StackSettings

if TYPE_CHECKING:
    from benchmarks.cli import StackDefaults
    from deployer.settings import RegistrySettings

log = logging.getLogger("modelops")


def _setup_logging(verbose: bool) -> None:
    # MLflow configures its own loggers at import time from this variable.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "DEBUG" if verbose else "WARNING")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\..*")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("urllib3", "alembic", "mlflow", "onnxscript", "onnx_ir", "httpx", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("torch").setLevel(logging.ERROR)


def _registry_settings(stack: StackSettings) -> RegistrySettings:
    from deployer.settings import RegistrySettings

    overrides = {
        "tracking_uri": os.environ.get("MODELOPS_REGISTRY_TRACKING_URI", stack.tracking_uri),
        "model_repository": os.environ.get("MODELOPS_REGISTRY_MODEL_REPOSITORY", str(stack.model_repository)),
        "triton_url": os.environ.get("MODELOPS_REGISTRY_TRITON_URL", f"{stack.host}:{stack.triton_http_port}"),
    }
    return RegistrySettings(
        tracking_uri=overrides["tracking_uri"],
        model_repository=Path(overrides["model_repository"]),
        triton_url=overrides["triton_url"],
    )


def cmd_up(args: argparse.Namespace) -> int:
    """Start the embedded stack and serve until Ctrl-C."""
    from modelops.stack import EmbeddedStack, StepFailed

    stack = EmbeddedStack(StackSettings())
    try:
        stack.start()
    except StepFailed as exc:
        log.error("%s", exc)
        return 1
    log.info("%s", stack.banner())
    stack.run_forever()
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    """Run the gateway with uvicorn (settings from MODELOPS_GATEWAY_*)."""
    import uvicorn

    uvicorn.run(
        "gateway.main:app_from_environment",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="info",
        timeout_graceful_shutdown=10,
    )
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    """Reconcile aliases with Triton once, or keep doing it with --watch."""
    from deployer.sync import SyncController

    rs = _registry_settings(StackSettings())
    controller = SyncController(rs)
    if args.watch:
        if args.metrics_port:
            from prometheus_client import start_http_server

            start_http_server(args.metrics_port, registry=controller.metrics.registry)
        stop = threading.Event()
        try:
            controller.watch(stop)
        except KeyboardInterrupt:
            stop.set()
        return 0
    failed = False
    for outcome in controller.run_once(args.model or None):
        if outcome.error:
            failed = True
            log.error("%s: %s", outcome.model, outcome.error)
        else:
            r = outcome.routing
            log.info(
                "%s: champion v%s, challenger v%s%s",
                outcome.model,
                r and r.champion,
                r and r.challenger,
                " (changed)" if outcome.changed else "",
            )
    return 1 if failed else 0


def _announce(model: str, version: int) -> int:
    log.info("registered %s version %d; promote it with `modelops promote %s %d`", model, version, model, version)
    return 0


def cmd_train_demo(args: argparse.Namespace) -> int:
    """Train and register a new version of the demo model (no alias is moved)."""
    from modelops.demo import train_and_register_demo

    rs = _registry_settings(StackSettings())
    version = train_and_register_demo(rs, epochs=args.epochs, seed=args.seed)
    return _announce(version.name, version.version)


def cmd_promote(args: argparse.Namespace) -> int:
    """Move an alias (champion by default) to a version."""
    from mlflow import MlflowClient

    from modelspec.tags import FORCE_TAG

    rs = _registry_settings(StackSettings())
    client = MlflowClient(rs.tracking_uri)
    if args.force:
        client.set_model_version_tag(args.model, str(args.version), FORCE_TAG, "true")
    client.set_registered_model_alias(args.model, args.alias, str(args.version))
    if args.alias == "champion" and args.wait > 0:
        log.info("%s@champion -> version %d; waiting for the sync controller", args.model, args.version)
        return _wait_served(rs.model_repository / args.model, args.version, args.wait)
    log.info(
        "%s@%s -> version %d; the sync controller serves it within seconds (`modelops status`)",
        args.model,
        args.alias,
        args.version,
    )
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """Move champion back to the previous champion (still loaded, so it is instant).

    The target comes from MLflow: the champion history before the version the alias names now
    (:func:`deployer.plan.rollback_target`), so a promotion the sync controller has not applied
    yet is the one undone.
    """
    import json as _json

    from mlflow import MlflowClient

    from deployer.plan import CHAMPION, rollback_target
    from modelspec import Routing
    from modelspec.repository import check_model_name
    from modelspec.tags import HISTORY_TAG

    rs = _registry_settings(StackSettings())
    model = check_model_name(args.model)
    client = MlflowClient(rs.tracking_uri)
    rm = client.get_registered_model(model)
    alias = (rm.aliases or {}).get(CHAMPION)
    current = int(alias) if alias is not None else None
    history = [int(v) for v in _json.loads((rm.tags or {}).get(HISTORY_TAG, "[]"))]
    target = rollback_target(history, current, Routing.read(rs.model_repository / model))
    if target is None:
        log.error("%s has no previous champion to roll back to; promote a version explicitly", model)
        return 1
    client.set_registered_model_alias(model, CHAMPION, str(target))
    log.info("%s@champion -> version %d (was %s)", model, target, current)
    return _wait_served(rs.model_repository / model, target, args.wait)


def _wait_served(model_dir: Path, version: int, timeout_s: float) -> int:
    """Wait until the sync controller routes the champion to ``version``; 0 when it did."""
    from modelspec import Routing

    if timeout_s <= 0:
        return 0
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        routing = Routing.read(model_dir)
        if routing is not None and routing.champion == version:
            log.info("serving version %d as champion after %.1f s", version, time.monotonic() - started)
            return 0
        time.sleep(0.1)
    log.error(
        "version %d is not serving after %.0f s: is the sync controller running (`modelops up` or "
        "`modelops sync --watch`)? `modelops status` shows why a version is blocked",
        version,
        timeout_s,
    )
    return 1


def cmd_diff(args: argparse.Namespace) -> int:
    """Explain what changed between two versions of a model."""
    from mlflow import MlflowClient

    from registry.lineage import diff_json, diff_versions, format_diff

    rs = _registry_settings(StackSettings())
    diff = diff_versions(MlflowClient(rs.tracking_uri), args.model, args.a, args.b)
    sys.stdout.write((diff_json(diff) if args.json else format_diff(diff)) + "\n")
    return 0


def _load_factory(spec: str) -> Any:
    import importlib

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"--module must look like package.module:factory, got {spec!r}")
    sys.path.insert(0, os.getcwd())
    return getattr(importlib.import_module(module_name), attr)


def _read_table(path: str) -> Any:
    import pandas as pd

    return pd.read_parquet(path) if path.endswith(".parquet") else pd.read_csv(path)


def cmd_schema(args: argparse.Namespace) -> int:
    """Infer a feature schema from a sample file (edit it, then pass it to `register`)."""
    from registry.byo import infer_schema

    schema = infer_schema(_read_table(args.data), name=args.name, target=args.target)
    sys.stdout.write(schema.model_dump_json(indent=2) + "\n")
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    """Register a trained PyTorch module (from a factory function) as a new version."""
    from modelspec import ModelSchema
    from registry.byo import register_model

    rs = _registry_settings(StackSettings())
    module = _load_factory(args.module)()
    schema = ModelSchema.model_validate_json(Path(args.schema).read_bytes()) if args.schema else None
    version = register_model(
        module, _read_table(args.data), name=args.name, target=args.target, schema=schema, settings=rs
    )
    return _announce(version.name, version.version)


def cmd_status(args: argparse.Namespace) -> int:
    """Show, per model: alias -> version -> Triton state -> run -> data hash -> serving since."""
    from modelops.status import collect_status, format_status

    rs = _registry_settings(StackSettings())
    rows = collect_status(rs)
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    else:
        sys.stdout.write(format_status(rows) + "\n")
    return 0


def _bench_defaults() -> StackDefaults:
    """Where this stack's servers are, for ``modelops bench`` (called only when it runs)."""
    from benchmarks.cli import StackDefaults

    stack = StackSettings()
    return StackDefaults(
        gateway_url=f"http://{stack.host}:{stack.gateway_port}",
        triton_url=f"http://{stack.host}:{stack.triton_http_port}",
        tracking_uri=os.environ.get("MODELOPS_REGISTRY_TRACKING_URI", stack.tracking_uri),
        model_repository=stack.model_repository,
        reports_root=stack.state_dir / "bench",
    )


def cmd_reset(args: argparse.Namespace) -> int:
    """Delete the embedded stack's state (registry, artifacts, logs) and the model repository."""
    from modelops.stack import reset_state

    if not args.yes:
        log.error("this deletes the registry and every served version; run again with --yes")
        return 1
    reset_state(StackSettings())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    p = argparse.ArgumentParser(prog="modelops", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("up", help="start the embedded stack in the foreground").set_defaults(fn=cmd_up)

    g = sub.add_parser("gateway", help="run the gateway (uvicorn)")
    g.add_argument("--host", default="127.0.0.1")
    g.add_argument("--port", type=int, default=8080)
    g.add_argument("--workers", type=int, default=1)
    g.set_defaults(fn=cmd_gateway)

    s = sub.add_parser("sync", help="reconcile MLflow aliases with Triton")
    s.add_argument("model", nargs="*", help="models to sync (default: every managed model)")
    s.add_argument("--watch", action="store_true", help="keep reconciling")
    s.add_argument("--metrics-port", type=int, default=int(os.environ.get("MODELOPS_SYNC_METRICS_PORT", "0")))
    s.set_defaults(fn=cmd_sync)

    t = sub.add_parser("train-demo", help="train and register a new demo model version")
    t.add_argument("--epochs", type=int, default=60)
    t.add_argument("--seed", type=int, default=7)
    t.set_defaults(fn=cmd_train_demo)

    pr = sub.add_parser("promote", help="move an alias to a version")
    pr.add_argument("model")
    pr.add_argument("version", type=int)
    pr.add_argument("--alias", default="champion", choices=["champion", "challenger"])
    pr.add_argument("--force", action="store_true", help="skip the promotion gates for this version")
    pr.add_argument("--wait", type=float, default=0, help="seconds to wait until the version serves")
    pr.set_defaults(fn=cmd_promote)

    rb = sub.add_parser("rollback", help="move champion back to the previous champion")
    rb.add_argument("model")
    rb.add_argument("--wait", type=float, default=10, help="seconds to wait until it serves (0: do not wait)")

    df = sub.add_parser("diff", help="what changed between two versions")
    df.add_argument("model")
    df.add_argument("a", type=int)
    df.add_argument("b", type=int)
    df.add_argument("--json", action="store_true")
    df.set_defaults(fn=cmd_diff)

    sc = sub.add_parser("schema", help="infer a feature schema from a sample (CSV or Parquet)")
    sc.add_argument("--data", required=True)
    sc.add_argument("--target", required=True)
    sc.add_argument("--name", required=True)
    sc.set_defaults(fn=cmd_schema)

    rg = sub.add_parser("register", help="register your own trained PyTorch module")
    rg.add_argument("--module", required=True, help="package.module:factory returning the trained nn.Module")
    rg.add_argument("--data", required=True, help="held-out sample with the target column (CSV or Parquet)")
    rg.add_argument("--target", required=True)
    rg.add_argument("--name", required=True)
    rg.add_argument("--schema", help="schema JSON (from `modelops schema`, edited); inferred when omitted")
    rg.set_defaults(fn=cmd_register)
    rb.set_defaults(fn=cmd_rollback)

    st = sub.add_parser("status", help="what is served, per model and alias")
    st.add_argument("--json", action="store_true")
    st.set_defaults(fn=cmd_status)

    # Looked up, not imported: a missing package is the one case to skip, while an error inside
    # an installed benchmarks package must still surface.
    if importlib.util.find_spec("benchmarks") is not None:
        from benchmarks.cli import add_bench_parser

        add_bench_parser(sub, defaults=_bench_defaults)

    rs = sub.add_parser("reset", help="delete the embedded stack's state")
    rs.add_argument("--yes", action="store_true")
    rs.set_defaults(fn=cmd_reset)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``modelops`` console script."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.fn(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
