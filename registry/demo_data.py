"""The demo data set: hourly solar irradiance and weather at Greensboro, NC (NREL TMY3).

The file ``723170TYA.CSV`` ships inside the ``pvlib`` wheel (``pvlib/data``), so nothing is
downloaded at run time. TMY3 (Typical Meteorological Year 3) is produced by the US National
Renewable Energy Laboratory (Wilcox & Marion, 2008, NREL/TP-581-43156), a US government work;
pvlib itself is BSD-3-Clause.

The task: predict global horizontal irradiance (GHI, W/m2), what a PV plant can harvest in the
hour, from the extraterrestrial irradiance and the weather observations of that hour. Only
daylight hours (extraterrestrial irradiance > 0) are kept.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from modelspec import CategoricalFeature, ModelSchema, NumericFeature, OutputSpec, QualityMetric

DEMO_MODEL_NAME = "solar_ghi"
TARGET = "ghi_wm2"
WIND_SECTORS = ["calm", "N", "NE", "E", "SE", "S", "SW", "W", "NW"]
UNLIMITED_CEILING = 77777  # TMY3's code for "no cloud ceiling"

# (name, TMY3 column, unit, description, scale)
_NUMERIC = [
    (
        "extraterrestrial_irradiance_wm2",
        "ETR (W/m^2)",
        "W/m2",
        "Irradiance on a horizontal surface at the top of the atmosphere (from the sun's position)",
        1.0,
    ),
    ("total_sky_cover_tenths", "TotCld (tenths)", "tenths", "Share of the sky covered by clouds", 1.0),
    (
        "opaque_sky_cover_tenths",
        "OpqCld (tenths)",
        "tenths",
        "Share of the sky covered by opaque clouds",
        1.0,
    ),
    ("dry_bulb_temp_c", "Dry-bulb (C)", "degC", "Air temperature", 1.0),
    ("dew_point_c", "Dew-point (C)", "degC", "Dew point temperature", 1.0),
    ("relative_humidity_pct", "RHum (%)", "%", "Relative humidity", 1.0),
    ("pressure_mbar", "Pressure (mbar)", "mbar", "Station pressure", 1.0),
    ("wind_speed_ms", "Wspd (m/s)", "m/s", "Wind speed", 1.0),
    ("visibility_km", "Hvis (m)", "km", "Horizontal visibility", 0.001),
    ("precipitable_water_cm", "Pwat (cm)", "cm", "Precipitable water in the air column", 1.0),
    ("ceiling_height_m", "CeilHgt (m)", "m", "Cloud ceiling height; null when there is no ceiling", 1.0),
]
NULLABLE = {"ceiling_height_m"}


@dataclass(frozen=True)
class Dataset:
    """Features and target of the demo data set, plus its content hash."""

    frame: pd.DataFrame
    target: np.ndarray
    data_hash: str
    source: str


def tmy3_path() -> Path:
    """Path of the TMY3 file inside the installed pvlib package."""
    import pvlib

    return Path(pvlib.__file__).parent / "data" / "723170TYA.CSV"


def wind_sector(speed: float, direction_deg: float) -> str:
    """Compass sector of a wind direction, or ``calm`` when there is no wind."""
    if speed <= 0.0:
        return "calm"
    return WIND_SECTORS[1 + int(((direction_deg % 360) + 22.5) // 45) % 8]


def load_demo_dataset() -> Dataset:
    """Load the daylight hours of the TMY3 file as named business features."""
    from pvlib.iotools import read_tmy3

    path = tmy3_path()
    raw, _meta = read_tmy3(str(path), map_variables=False)
    raw = raw[raw["ETR (W/m^2)"] > 0].reset_index(drop=True)
    frame = pd.DataFrame({name: raw[col].astype("float64") * scale for name, col, _, _, scale in _NUMERIC})
    frame["ceiling_height_m"] = frame["ceiling_height_m"].where(raw["CeilHgt (m)"] != UNLIMITED_CEILING)
    frame["wind_direction"] = [wind_sector(s, d) for s, d in zip(raw["Wspd (m/s)"], raw["Wdir (degrees)"], strict=True)]
    target = raw["GHI (W/m^2)"].to_numpy(dtype=np.float64)
    digest = hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    digest.update(target.tobytes())
    return Dataset(frame=frame, target=target, data_hash=f"sha256:{digest.hexdigest()}", source=str(path))


def demo_schema(frame: pd.DataFrame) -> ModelSchema:
    """The feature schema of the demo model, with ranges taken from ``frame`` (training rows)."""
    features: list[NumericFeature | CategoricalFeature] = []
    for name, _col, unit, description, _scale in _NUMERIC:
        col = frame[name].dropna()
        features.append(
            NumericFeature(
                name=name,
                description=description,
                unit=unit,
                minimum=float(col.min()),
                maximum=float(col.max()),
                nullable=name in NULLABLE,
                example=float(col.median()),
            )
        )
    features.append(
        CategoricalFeature(
            name="wind_direction",
            description="Compass sector the wind blows from (calm when there is no wind)",
            categories=WIND_SECTORS,
            example="SW",
        )
    )
    return ModelSchema(
        model_name=DEMO_MODEL_NAME,
        description="Hourly global horizontal irradiance from weather observations (NREL TMY3, Greensboro NC)",
        features=features,
        outputs=[OutputSpec(name=TARGET, unit="W/m2", description="Predicted global horizontal irradiance")],
        quality_metric=QualityMetric(name="rmse", greater_is_better=False),
    )
