"""ONNX export of a trained module, with a parity check that blocks bad exports.

The export is one self-contained file (no external data) with a dynamic batch axis. Parity is
checked with onnxruntime against the torch module on held-out rows at several batch sizes; the
rows and the torch outputs are kept as the version's reference for the smoke test after a
Triton load.

:func:`export_torchscript` writes the optional torch artifact (``model.pt``) that the embedded
backend runs on a GPU where onnxruntime has no CUDA provider; it is parity-checked the same way.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from modelspec import ModelSchema, Reference
from modelspec.tensors import feed

log = logging.getLogger(__name__)

PARITY_BATCH_SIZES = (1, 4, 37)


class ParityError(RuntimeError):
    """The exported graph does not reproduce the torch module within tolerance."""


@dataclass(frozen=True)
class ExportResult:
    """The exported file, its parity error and the reference for smoke tests."""

    path: Path
    max_abs_error: float
    reference: Reference


def parity_tolerance(outputs: np.ndarray) -> float:
    """Allowed absolute difference: float32 rounding, scaled to the outputs' magnitude."""
    return 1e-4 * max(1.0, float(np.abs(outputs).max(initial=0.0)))


def check_finite(what: str, outputs: np.ndarray, remedy: str) -> None:
    """Raise :class:`ParityError` when ``outputs`` hold a NaN or an infinity.

    A difference with a NaN in it compares false with everything, so ``max(worst, nan)`` keeps
    ``worst`` and a module or graph that computes NaN would pass the tolerance check; this check
    comes first and names the fault.

    Args:
        what: whose outputs these are, for the message (``the torch module``, ``the ONNX export``).
        outputs: the outputs on the held-out rows.
        remedy: what this blocks and what to look at, for the message.
    """
    finite = np.isfinite(outputs)
    if not finite.all():
        rows = int(np.count_nonzero(~finite.reshape(len(outputs), -1).all(axis=1)))
        raise ParityError(
            f"{what} computed a value that is not a finite number (NaN or infinity) on {rows} of "
            f"{len(outputs)} held-out rows; {remedy}"
        )


_MODULE_CAUSES = (
    "check the module for overflow (float16, exp) and for log, sqrt or division of values outside their domain, "
    "and the training for diverged weights."
)


def export_onnx(
    module: torch.nn.Module,
    schema: ModelSchema,
    numeric: np.ndarray,
    categorical: np.ndarray,
    path: Path,
) -> ExportResult:
    """Export ``module`` to ``path`` and check parity on the given held-out rows.

    Args:
        module: the trained module, taking (numeric, categorical) tensors.
        schema: names the input and output tensors.
        numeric: held-out rows, FP32 ``[n, n_numeric]`` (n >= 37 for every parity batch size).
        categorical: the same rows, INT64 ``[n, n_categorical]``.
        path: where the ``.onnx`` file goes.

    Raises:
        ParityError: the graph's outputs differ from the module's beyond tolerance, or the module's
            or the graph's outputs are not all finite.
    """
    import onnxruntime as ort

    module.eval()
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    sample = (torch.from_numpy(numeric[:4]), torch.from_numpy(categorical[:4]))
    output_names = [o.name for o in schema.outputs]
    path.parent.mkdir(parents=True, exist_ok=True)
    # The exporter reports its passes on stdout; keep them in the debug log instead.
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        torch.onnx.export(
            module,
            sample,
            str(path),
            dynamo=True,
            external_data=False,
            input_names=[schema.numeric_tensor, schema.categorical_tensor],
            output_names=output_names,
            dynamic_shapes=({0: batch}, {0: batch}),
        )
    log.debug("torch.onnx.export: %s", captured.getvalue())

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    with torch.no_grad():
        expected_all = module(torch.from_numpy(numeric), torch.from_numpy(categorical)).numpy()
    check_finite("the torch module", expected_all, f"the version was not registered: {_MODULE_CAUSES}")
    tolerance = parity_tolerance(expected_all)
    for n in PARITY_BATCH_SIZES:
        if n > len(numeric):
            continue
        got = session.run(None, feed(schema, numeric[:n], categorical[:n]))[0]
        check_finite(
            f"the ONNX export at batch size {n}",
            got,
            "the version was not registered. The torch module's outputs are finite: check the module for ops that "
            "export differently.",
        )
        worst = max(worst, float(np.abs(got - expected_all[:n]).max()))
    log.info(
        "ONNX parity: max abs error %.3g (tolerance %.3g) at batch sizes %s",
        worst,
        tolerance,
        PARITY_BATCH_SIZES,
    )
    if not worst <= tolerance:
        raise ParityError(
            f"ONNX export differs from the torch module by {worst:.3g} (> {tolerance:.3g}); "
            "the version was not registered. Check the module for ops that export differently."
        )
    n_ref = min(len(numeric), 16)
    reference = Reference(
        numeric=[[None if np.isnan(v) else float(v) for v in row] for row in numeric[:n_ref]],
        categorical=categorical[:n_ref].tolist(),
        outputs={name: expected_all[:n_ref, i].astype(float).tolist() for i, name in enumerate(output_names)},
        tolerance=tolerance,
    )
    return ExportResult(path=path, max_abs_error=worst, reference=reference)


@dataclass(frozen=True)
class TorchExportResult:
    """The TorchScript file and its parity error against the module."""

    path: Path
    max_abs_error: float


def export_torchscript(
    module: torch.nn.Module,
    numeric: np.ndarray,
    categorical: np.ndarray,
    path: Path,
) -> TorchExportResult:
    """Trace ``module`` to a TorchScript file at ``path`` and check the reloaded file's parity.

    TorchScript rather than ``torch.export`` (pt2): a TorchScript file written by a newer torch
    loads in older ones (the serving host's torch may lag the registry's), and it needs no
    Python source of the module where it is served. Tracing fixes the control flow, which for a
    feed-forward module over (numeric, categorical) tensors depends on nothing but the weights;
    the batch axis stays dynamic, and the parity check at several batch sizes confirms it.

    Args:
        module: the trained module, taking (numeric, categorical) tensors.
        numeric: held-out rows, FP32 ``[n, n_numeric]``.
        categorical: the same rows, INT64 ``[n, n_categorical]``.
        path: where the ``.pt`` file goes.

    Raises:
        ParityError: the reloaded file's outputs differ from the module's beyond tolerance, or the
            module's or the file's outputs are not all finite.
    """
    module.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    sample = (torch.from_numpy(numeric[:4]), torch.from_numpy(categorical[:4]))
    # torch 2.13 marks torch.jit deprecated; it is still the format older serving torches load.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
        traced = torch.jit.trace(module, sample, check_trace=False)
        torch.jit.save(traced, str(path))
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        expected_all = module(torch.from_numpy(numeric), torch.from_numpy(categorical)).numpy()
        try:
            check_finite("the torch module", expected_all, f"no TorchScript file was written: {_MODULE_CAUSES}")
            tolerance = parity_tolerance(expected_all)
            worst = 0.0
            for n in PARITY_BATCH_SIZES:
                if n > len(numeric):
                    continue
                got = loaded(torch.from_numpy(numeric[:n]), torch.from_numpy(categorical[:n])).numpy()
                check_finite(
                    f"the TorchScript file at batch size {n}",
                    got,
                    "no TorchScript file was written. The torch module's outputs are finite: check it for "
                    "data-dependent control flow, which tracing cannot capture.",
                )
                worst = max(worst, float(np.abs(got - expected_all[:n]).max()))
        except ParityError:
            path.unlink(missing_ok=True)  # as for a parity failure: no file that failed its check is left
            raise
    log.info(
        "TorchScript parity: max abs error %.3g (tolerance %.3g) at batch sizes %s",
        worst,
        tolerance,
        PARITY_BATCH_SIZES,
    )
    if not worst <= tolerance:
        path.unlink(missing_ok=True)
        raise ParityError(
            f"TorchScript export differs from the torch module by {worst:.3g} (> {tolerance:.3g}); "
            "check the module for data-dependent control flow, which tracing cannot capture."
        )
    return TorchExportResult(path=path, max_abs_error=worst)
