"""Training, ONNX export and its parity gate, on the real demo data (a few epochs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from modelspec import ModelSchema, NumericFeature, OutputSpec
from registry import export as export_mod
from registry.demo_data import WIND_SECTORS, load_demo_dataset, wind_sector
from registry.export import ParityError, export_onnx, export_torchscript
from registry.profiling import build_profile
from registry.tabular import encode, train_regressor


@pytest.fixture(scope="module")
def trained():
    data = load_demo_dataset()
    from registry.demo_data import demo_schema

    schema = demo_schema(data.frame)
    result = train_regressor(data.frame, data.target, schema, epochs=3)
    return data, schema, result


def test_demo_data_is_real_and_shaped_as_documented() -> None:
    data = load_demo_dataset()
    assert len(data.frame) == 4751  # daylight hours of the TMY3 year
    assert data.frame["ceiling_height_m"].isna().mean() > 0.3  # "no ceiling" is common
    assert set(data.frame["wind_direction"]) <= set(WIND_SECTORS)
    assert data.data_hash == load_demo_dataset().data_hash  # deterministic
    assert 0 < data.target.max() < 1400


@pytest.mark.parametrize(
    ("speed", "deg", "sector"), [(0, 90, "calm"), (3, 0, "N"), (3, 350, "N"), (3, 90, "E"), (3, 225, "SW")]
)
def test_wind_sector(speed: float, deg: float, sector: str) -> None:
    assert wind_sector(speed, deg) == sector


def test_schema_has_the_required_kinds(trained) -> None:
    _, schema, _ = trained
    assert len(schema.features) >= 6
    assert schema.categorical and any(f.nullable for f in schema.features)
    ModelSchema.model_validate_json(schema.model_dump_json())


def test_training_is_seeded_and_learns(trained) -> None:
    data, schema, result = trained
    again = train_regressor(data.frame, data.target, schema, epochs=3)
    assert result.metrics["rmse"] == pytest.approx(again.metrics["rmse"])
    assert result.metrics["r2"] > 0.5
    assert set(result.train_index).isdisjoint(result.test_index)


def test_export_parity_and_dynamic_batch(trained, tmp_path: Path) -> None:
    data, schema, result = trained
    numeric, categorical = encode(data.frame.iloc[result.test_index], schema)
    exported = export_onnx(result.module, schema, numeric, categorical, tmp_path / "model.onnx")
    assert exported.max_abs_error <= exported.reference.tolerance
    assert not list(tmp_path.glob("*.data")), "the export must be one self-contained file"
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    for n in (1, 5, 300):
        out = session.run(None, {"numeric": numeric[:n], "categorical": categorical[:n]})[0]
        with torch.no_grad():
            ref = result.module(torch.from_numpy(numeric[:n]), torch.from_numpy(categorical[:n])).numpy()
        assert out.shape == (n, 1)
        np.testing.assert_allclose(out, ref, atol=exported.reference.tolerance)
    assert len(exported.reference.numeric) == len(exported.reference.outputs["ghi_wm2"])


def test_failed_parity_blocks(trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, schema, result = trained
    numeric, categorical = encode(data.frame.iloc[result.test_index], schema)
    monkeypatch.setattr(export_mod, "parity_tolerance", lambda _outputs: -1.0)
    with pytest.raises(ParityError, match="not registered"):
        export_onnx(result.module, schema, numeric, categorical, tmp_path / "model.onnx")


def test_profile_covers_every_feature_and_output(trained) -> None:
    data, schema, result = trained
    frame = data.frame.iloc[result.train_index]
    profile = build_profile(frame, schema, np.zeros((len(frame), 1)))
    assert set(profile.numeric) == {f.name for f in schema.numeric}
    assert set(profile.categorical) == {"wind_direction"}
    assert profile.numeric["ceiling_height_m"].missing_rate > 0.3
    assert set(profile.predictions) == {"ghi_wm2"}


class _LogOfFirst(torch.nn.Module):
    """``log(numeric[:, 0]) + categorical``: NaN on the rows whose first value is negative."""

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        return torch.log(numeric[:, :1]) + categorical[:, :1].to(torch.float32)


def _rows(negative: int) -> tuple[np.ndarray, np.ndarray]:
    numeric = np.linspace(1.0, 2.0, 40, dtype=np.float32).reshape(40, 1)
    numeric[:negative] *= -1  # log(-x) is NaN, in torch and onnxruntime alike
    return numeric, np.zeros((40, 1), dtype=np.int64)


_TINY = ModelSchema(
    model_name="nan_model",
    features=[NumericFeature(name="x", minimum=-2, maximum=2, example=1.0)],
    outputs=[OutputSpec(name="y")],
)


def test_a_module_that_computes_nan_fails_both_parity_checks(tmp_path: Path) -> None:
    numeric, categorical = _rows(negative=3)
    with pytest.raises(
        ParityError, match=r"the torch module computed a value that is not a finite number .* on 3 of 40"
    ):
        export_onnx(_LogOfFirst(), _TINY, numeric, categorical, tmp_path / "model.onnx")
    with pytest.raises(ParityError, match=r"not a finite number .*no TorchScript file was written"):
        export_torchscript(_LogOfFirst(), numeric, categorical, tmp_path / "model.pt")
    assert not (tmp_path / "model.pt").exists()
    finite = _rows(negative=0)  # the same modules pass on finite outputs
    assert export_onnx(_LogOfFirst(), _TINY, *finite, tmp_path / "ok.onnx").max_abs_error < 1e-5
    assert export_torchscript(_LogOfFirst(), *finite, tmp_path / "ok.pt").max_abs_error < 1e-5


def test_an_engine_that_answers_nan_fails_parity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The torch module is finite, the exported graph answers NaN (an FP16 overflow, say)."""

    class NanSession(ort.InferenceSession):
        def run(self, *args: Any, **kwargs: Any) -> Any:
            outputs = super().run(*args, **kwargs)
            outputs[0][-1] = np.nan
            return outputs

    monkeypatch.setattr(ort, "InferenceSession", NanSession)
    with pytest.raises(ParityError, match=r"the ONNX export at batch size 1 computed a value that is not a finite"):
        export_onnx(_LogOfFirst(), _TINY, *_rows(negative=0), tmp_path / "model.onnx")
