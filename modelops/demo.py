"""Train and register the demo model (solar irradiance from weather, NREL TMY3 via pvlib)."""

from __future__ import annotations

import logging

from deployer.settings import RegistrySettings
from registry.register import RegisteredVersion, register_trained

log = logging.getLogger(__name__)


def train_and_register_demo(settings: RegistrySettings, epochs: int, seed: int = 7) -> RegisteredVersion:
    """Train the demo regressor for ``epochs`` and register it as a new MLflow version."""
    from registry.demo_data import demo_schema, load_demo_dataset
    from registry.tabular import train_regressor

    log.info("step: loading the demo data (NREL TMY3, Greensboro NC, from the pvlib package)")
    data = load_demo_dataset()
    schema = demo_schema(data.frame)
    log.info("step: training %s on %d rows for %d epochs", schema.model_name, len(data.frame), epochs)
    every = max(1, epochs // 6)

    def progress(epoch: int, total: int, loss: float) -> None:
        if epoch % every == 0 or epoch == total:
            log.info("  epoch %d/%d  train loss %.4f", epoch, total, loss)

    result = train_regressor(data.frame, data.target, schema, epochs=epochs, seed=seed, on_epoch=progress)
    log.info(
        "  held-out rmse %.1f W/m2, mae %.1f W/m2, r2 %.3f",
        result.metrics["rmse"],
        result.metrics["mae"],
        result.metrics["r2"],
    )
    return register_trained(
        settings,
        schema,
        data.frame,
        data.target,
        result,
        data_hash=data.data_hash,
        data_source=f"NREL TMY3 723170 (Greensboro NC) from pvlib: {data.source}",
        description=schema.description,
        progress=lambda msg: log.info("step: %s", msg),
    )
