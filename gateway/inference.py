"""One validated batch through Triton: in chunks of the model's ``max_batch_size``, as one matrix.

Triton refuses a request with more rows than the model's ``max_batch_size``, so a larger batch is
split and its chunks are sent at once; the answers are joined back in order. The usual request
fits in one call, which is awaited directly (no task per request: this is the hot path).

An answer with a NaN or infinite output raises :class:`~gateway.errors.NonFinitePrediction` here,
for the request path and the shadow calls alike, before anything is answered, stored or binned:
JSON has no NaN (it would become ``null`` in a 200), and a NaN in the feedback store or a drift
window poisons every later sum.
"""

from __future__ import annotations

import asyncio

import numpy as np

from gateway.contract import Batch
from gateway.errors import NonFinitePrediction
from gateway.serving import ServedVersion
from gateway.upstream import InferenceClient


async def infer_in_chunks(
    client: InferenceClient, served: ServedVersion, batch: Batch, max_batch_size: int | None, request_id: str
) -> np.ndarray:
    """Call Triton for a batch: one call, or chunks of ``max_batch_size`` rows run at once.

    Args:
        client: the inference client.
        served: the version to call (its schema names the tensors and outputs).
        batch: the validated input tensors.
        max_batch_size: the model's ``max_batch_size``; None when unknown (one call).
        request_id: sent with the call; chunk ``i`` is sent as ``<request_id>.<i>``.

    Returns:
        The outputs as one float32 ``[rows, n_outputs]`` matrix in schema order, every value
        finite. No latency is recorded here: the callers time it (the request path and the shadow
        calls have different histograms).

    Raises:
        NonFinitePrediction: an output of the answer is NaN or infinite (502).
    """
    schema = served.schema
    names = [o.name for o in schema.outputs]
    step = max_batch_size or batch.rows
    if batch.rows <= step:  # the usual case: one call, awaited directly (no task per request)
        outputs = await client.infer(
            served.model,
            served.version,
            batch.feed(schema),
            names,
            request_id=request_id,
        )
        return finite(outputs_matrix(outputs, names, batch.rows), served, batch)
    starts = range(0, batch.rows, step)
    results = await asyncio.gather(
        *(
            client.infer(
                served.model,
                served.version,
                batch.feed(schema, slice(i, i + step)),
                names,
                request_id=f"{request_id}.{i // step}",
            )
            for i in starts
        )
    )
    parts = [
        outputs_matrix(outputs, names, min(step, batch.rows - i)) for i, outputs in zip(starts, results, strict=True)
    ]
    matrix: np.ndarray = np.concatenate(parts)
    return finite(matrix, served, batch)


def finite(matrix: np.ndarray, served: ServedVersion, batch: Batch) -> np.ndarray:
    """``matrix`` when every value is finite; else raise :class:`~gateway.errors.NonFinitePrediction`.

    The message says whether the records concerned had values flagged ``out_of_range``: the
    contract accepts values far outside the trained ranges (up to the float32 limit), and those can
    overflow a model that computes finite numbers on everything it was trained on.

    Args:
        matrix: a version's outputs, ``[rows, n_outputs]``.
        served: the version that computed them (named in the message).
        batch: the validated batch (its flags say which records had out-of-range values).
    """
    if np.isfinite(matrix).all():  # one pass over a few floats: the hot path stays cheap
        return matrix
    bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
    out_of_range = {f.record for f in batch.flags if f.reason == "out_of_range"}
    flagged = sum(1 for i in bad.tolist() if i in out_of_range)
    what = (
        f"model {served.model} v{served.version} computed a value that is not a finite number (NaN or infinity) "
        f"for {bad.size} of {matrix.shape[0]} record(s), so nothing was answered or stored"
    )
    if flagged:
        raise NonFinitePrediction(
            f"{what}; {flagged} of them had values outside the trained ranges (flagged out_of_range), which can "
            "overflow the model: send values within the trained ranges (see /docs), or report the request_id to "
            "the model's owners"
        )
    raise NonFinitePrediction(
        f"{what}; this is a fault of the model version, not of the request, and a retry fails the same way "
        "until the version is replaced: report the request_id to the model's owners"
    )


def outputs_matrix(outputs: dict[str, np.ndarray], names: list[str], rows: int) -> np.ndarray:
    """The named ``[rows, 1]`` outputs of one call as one float32 ``[rows, len(names)]`` matrix."""
    if len(names) == 1:
        return np.asarray(outputs[names[0]], dtype=np.float32).reshape(rows, -1)[:, :1]
    return np.column_stack([np.asarray(outputs[n], dtype=np.float32).reshape(rows, -1)[:, 0] for n in names])
