"""Test support: a synthetic model repository and a fake inference client.

Unit tests of the gateway run in-process against :class:`FakeTriton` (integration tests use the
real Triton); :func:`given_body` lets them call the data plane (:mod:`gateway.dataplane`) without
HTTP. :func:`write_repository` writes what the sync controller would: per version
``schema.json``, ``profile.json`` and ``manifest.json``, and the model's ``routing.json``. The
profile is built from synthetic training rows and the fake model's own predictions, so traffic
drawn by :func:`training_records` shows no drift.

``uvicorn --factory gateway.testing:create_fake_app`` serves a gateway over such a repository
(``MODELOPS_GATEWAY_*`` settings; ``MODELOPS_FAKE_TRITON_DELAY_S`` delays each inference).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from fastapi import FastAPI

from modelspec import (
    CategoricalFeature,
    CategoricalProfile,
    Manifest,
    ModelSchema,
    NumericFeature,
    NumericProfile,
    OutputSpec,
    Routing,
    TrainingProfile,
)
from modelspec.bundle import MANIFEST_FILE, PROFILE_FILE, SCHEMA_FILE

if TYPE_CHECKING:
    from gateway.settings import GatewaySettings

MODEL = "demo_model"
TRAINED_RMSE = 20.0


def demo_schema(model: str = MODEL) -> ModelSchema:
    """A schema with one feature of every kind and policy the contract knows."""
    return ModelSchema(
        model_name=model,
        description="Synthetic model for gateway tests",
        features=[
            NumericFeature(
                name="temperature_c", description="Air temperature", unit="degC", minimum=-20, maximum=40, example=15
            ),
            NumericFeature(
                name="pressure_mbar",
                description="Station pressure",
                unit="mbar",
                minimum=950,
                maximum=1050,
                range_policy="reject",
                example=1000,
            ),
            NumericFeature(
                name="cloud_cover_tenths",
                description="Cloud cover; null when not observed",
                unit="tenths",
                minimum=0,
                maximum=10,
                nullable=True,
                example=4,
            ),
            CategoricalFeature(
                name="wind_direction", description="Wind sector", categories=["calm", "N", "E", "S", "W"], example="N"
            ),
            CategoricalFeature(
                name="station_type",
                description="Kind of station",
                categories=["rural", "urban", "other"],
                nullable=True,
                unknown_policy="fallback",
                fallback="other",
                example="rural",
            ),
        ],
        outputs=[OutputSpec(name="ghi_wm2", description="Irradiance", unit="W/m2")],
    )


def fake_model(numeric: np.ndarray, categorical: np.ndarray, version: int) -> np.ndarray:
    """The fake's prediction, ``[rows]``: a fixed linear function of the tensors plus ``version``."""
    x = np.nan_to_num(np.asarray(numeric, dtype=np.float64))
    weights = np.arange(1, x.shape[1] + 1, dtype=np.float64)
    cats = np.asarray(categorical, dtype=np.float64).sum(axis=1)
    result: np.ndarray = x @ weights * 0.1 + cats + float(version)
    return result


def training_records(n: int, seed: int = 0, *, shift: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """``n`` records from the synthetic training distribution; ``shift`` adds a constant to a numeric field."""
    rng = np.random.default_rng(seed)
    shift = shift or {}
    temperature = np.clip(rng.normal(15, 8, n), -20, 40) + shift.get("temperature_c", 0.0)
    pressure = rng.uniform(960, 1040, n) + shift.get("pressure_mbar", 0.0)
    cloud = rng.integers(0, 11, n).astype(float) + shift.get("cloud_cover_tenths", 0.0)
    cloud_missing = rng.random(n) < 0.1
    wind = rng.choice(["calm", "N", "E", "S", "W"], n, p=[0.1, 0.3, 0.2, 0.2, 0.2])
    station = rng.choice(["rural", "urban", "other"], n, p=[0.5, 0.4, 0.1])
    return [
        {
            "temperature_c": round(float(temperature[i]), 1),
            "pressure_mbar": round(float(pressure[i]), 1),
            "cloud_cover_tenths": None if cloud_missing[i] else float(cloud[i]),
            "wind_direction": str(wind[i]),
            "station_type": str(station[i]),
        }
        for i in range(n)
    ]


def tensors_of(schema: ModelSchema, records: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """The tensors the gateway builds for valid ``records`` (via its own validation)."""
    from gateway.contract import validate

    batch = validate(schema, records, max(len(records), 1))
    return batch.numeric, batch.categorical


def build_profile(schema: ModelSchema, version: int, rows: int = 4000) -> TrainingProfile:
    """Training profile of the synthetic distribution, predictions from :func:`fake_model`."""
    records = training_records(rows, seed=12345)
    numeric, categorical = tensors_of(schema, records)
    predictions = fake_model(numeric, categorical, version)
    return TrainingProfile(
        rows=rows,
        numeric={
            f.name: NumericProfile.from_values([np.nan if r[f.name] is None else r[f.name] for r in records])
            for f in schema.numeric
        },
        categorical={
            f.name: CategoricalProfile.from_values([r[f.name] for r in records], f.categories)
            for f in schema.categorical
        },
        predictions={schema.outputs[0].name: NumericProfile.from_values(predictions)},
    )


def write_version(root: Path, schema: ModelSchema, version: int, rmse: float = TRAINED_RMSE) -> None:
    """Write the gateway's documents of one version under ``root/<model>/<version>/``."""
    vdir = root / schema.model_name / str(version)
    vdir.mkdir(parents=True, exist_ok=True)
    (vdir / SCHEMA_FILE).write_text(schema.model_dump_json(indent=2))
    (vdir / PROFILE_FILE).write_text(build_profile(schema, version).model_dump_json())
    manifest = Manifest(
        model_name=schema.model_name,
        version=version,
        run_id=f"run{version:030d}",
        data_hash="sha256:test",
        git_commit="test",
        parity_max_abs_error=0.0,
        metrics={"rmse": rmse, "mae": rmse * 0.8},
    )
    (vdir / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2))


def write_routing(root: Path, model: str, champion: int | None, challenger: int | None = None) -> None:
    """Point the aliases of ``model`` at versions (as the sync controller does, atomically)."""
    Routing(
        model_name=model,
        champion=champion,
        challenger=challenger,
        champion_run_id=f"run{champion:030d}" if champion is not None else None,
        challenger_run_id=f"run{challenger:030d}" if challenger is not None else None,
    ).write(root / model)


def write_repository(
    root: Path, *, schema: ModelSchema | None = None, champion: int = 1, challenger: int | None = None
) -> ModelSchema:
    """A repository serving ``schema`` (default :func:`demo_schema`) at the given versions."""
    schema = schema or demo_schema()
    for version in {champion, challenger} - {None}:
        assert version is not None
        write_version(root, schema, version)
    write_routing(root, schema.model_name, champion, challenger)
    return schema


@dataclass
class FakeTriton:
    """An in-memory inference client computing :func:`fake_model`.

    ``delay_s`` delays every call (``delays`` per version); ``error`` (or ``errors`` per
    version) is raised instead of answering; ``ready`` is what the readiness calls answer.
    """

    delay_s: float = 0.0
    delays: dict[int, float] = field(default_factory=dict)
    error: Exception | None = None
    errors: dict[int, Exception] = field(default_factory=dict)
    ready: bool = True
    calls: list[tuple[str, int, int, str]] = field(default_factory=list)
    closed: bool = False

    async def close(self) -> None:
        """Mark closed."""
        self.closed = True

    async def server_ready(self) -> bool:
        """``ready``."""
        return self.ready

    async def model_ready(self, model: str, version: int) -> bool:
        """``ready``."""
        return self.ready

    async def infer(
        self,
        model: str,
        version: int,
        tensors: dict[str, np.ndarray],
        outputs: list[str],
        request_id: str = "",
    ) -> dict[str, np.ndarray]:
        """Answer with :func:`fake_model` of the tensors, one column per output."""
        numeric = tensors["numeric"]
        self.calls.append((model, version, int(numeric.shape[0]), request_id))
        delay = self.delays.get(version, self.delay_s)
        if delay:
            await asyncio.sleep(delay)
        error = self.errors.get(version, self.error)
        if error is not None:
            raise error
        value = fake_model(numeric, tensors["categorical"], version).astype(np.float32).reshape(-1, 1)
        return {name: value + j for j, name in enumerate(outputs)}


def given_body(document: Any) -> Callable[[int], Awaitable[bytes]]:
    """A body reader for :meth:`gateway.dataplane.Gateway.predict` without HTTP: the JSON of ``document``.

    ``bytes`` are sent as they are (to test malformed bodies). The size limit is the transport's
    business (:func:`gateway.transport.read_json_bytes`) and is not applied here.
    """
    raw = document if isinstance(document, bytes) else orjson.dumps(document)

    async def read(_limit: int) -> bytes:
        return raw

    return read


def factory(fake: FakeTriton) -> Callable[[Any], FakeTriton]:
    """A ``client_factory`` for :func:`gateway.app.create_app` that returns ``fake``."""
    return lambda _settings: fake


def create_fake_app() -> FastAPI:
    """uvicorn factory: the gateway over the repository of the settings, answering with a fake."""
    import logging

    from gateway.app import create_app
    from gateway.settings import GatewaySettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    fake = FakeTriton(delay_s=float(os.environ.get("MODELOPS_FAKE_TRITON_DELAY_S", "0")))
    return create_app(GatewaySettings(), client_factory=factory(fake))


def settings_for(tmp_path: Path, **overrides: Any) -> GatewaySettings:
    """Gateway settings over the repository that :func:`write_repository` makes at ``tmp_path / "repo"``.

    The feedback store goes under ``tmp_path / "state"`` and SIGTERM draining is off; ``overrides``
    replace any field.
    """
    from gateway.settings import GatewaySettings

    values: dict[str, Any] = {
        "model_repository": tmp_path / "repo",
        "default_model": MODEL,
        "feedback_db_path": tmp_path / "state" / "feedback.db",
        "shutdown_drain_s": 0,
    }
    return GatewaySettings(**{**values, **overrides})


def metric_value(exposition: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` whose labels include ``labels`` in a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None
