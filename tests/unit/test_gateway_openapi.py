"""The OpenAPI contract is snapshotted: a change that would break clients fails; docs/contract.md is current.

Two documents are snapshotted: the gateway serving the test model (``openapi.json``, one feature of
every kind and policy) and serving the demo schema really deployed (``openapi.solar_ghi.json``, from
``solar_ghi.schema.json``). A missing snapshot fails; refresh them after a deliberate, non-breaking
change with ``UPDATE_SNAPSHOTS=1 .venv/bin/pytest tests/unit/test_gateway_openapi.py``.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest

from gateway import errors
from gateway.app import create_app
from gateway.docs import main as docs_main
from gateway.docs import render
from gateway.settings import GatewaySettings
from gateway.testing import FakeTriton, demo_schema, factory, write_repository, write_routing
from modelspec import MANIFEST_FILE, SCHEMA_FILE, Manifest, ModelSchema

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOTS = ROOT / "tests" / "snapshots"
OPENAPI_SNAPSHOT = SNAPSHOTS / "openapi.json"
SERVED_SCHEMA = SNAPSHOTS / "solar_ghi.schema.json"
SERVED_OPENAPI_SNAPSHOT = SNAPSHOTS / "openapi.solar_ghi.json"
CONTRACT_PAGE = ROOT / "docs" / "contract.md"
UPDATE = os.environ.get("UPDATE_SNAPSHOTS") == "1"


def current_openapi(tmp_path: Path, schema: ModelSchema | None = None) -> dict[str, Any]:
    """The OpenAPI document of a gateway serving ``schema`` (default: the test model)."""
    root = tmp_path / "repo"
    served = write_repository(root) if schema is None else _write_bare_repository(root, schema)
    settings = GatewaySettings(model_repository=root, default_model=served.model_name)
    app = create_app(settings, factory(FakeTriton()))
    return json.loads(json.dumps(app.openapi()))


def _write_bare_repository(root: Path, schema: ModelSchema) -> ModelSchema:
    """A repository serving ``schema`` at version 1 with its schema and manifest only (no drift profile: the
    test helpers profile the test model's synthetic records, and the OpenAPI document does not depend on it)."""
    vdir = root / schema.model_name / "1"
    vdir.mkdir(parents=True)
    (vdir / SCHEMA_FILE).write_text(schema.model_dump_json(indent=2))
    manifest = Manifest(
        model_name=schema.model_name,
        version=1,
        run_id=f"run{1:030d}",
        data_hash="sha256:test",
        git_commit="test",
        parity_max_abs_error=0.0,
        metrics={schema.quality_metric.name: 1.0},
    )
    (vdir / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2))
    write_routing(root, schema.model_name, 1)
    return schema


def served_schema() -> ModelSchema:
    """The demo schema the stack serves (the integration tests check that it is the one really served)."""
    return ModelSchema.model_validate_json(SERVED_SCHEMA.read_bytes())


SNAPSHOTTED = {
    "test-model": (OPENAPI_SNAPSHOT, lambda: None),
    "served-demo": (SERVED_OPENAPI_SNAPSHOT, served_schema),
}


def read_snapshot(path: Path, current: dict[str, Any], *, update: bool = UPDATE) -> dict[str, Any]:
    """The snapshot at ``path``; written from ``current`` only when regeneration is asked (``UPDATE_SNAPSHOTS=1``).

    A missing snapshot fails: writing one then would compare the document with itself and pass.
    """
    if update:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    if not path.exists():
        pytest.fail(
            f"the OpenAPI snapshot {path.name} is missing: restore it from git, or create it deliberately with "
            "UPDATE_SNAPSHOTS=1 .venv/bin/pytest tests/unit/test_gateway_openapi.py"
        )
    return json.loads(path.read_text())


# -- a small OpenAPI compatibility checker -------------------------------------------------------
def _resolve(doc: dict, schema: dict | None) -> dict:
    while schema and "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = doc["components"]["schemas"][name]
    return schema or {}


def _types(schema: dict) -> set[str]:
    t = schema.get("type")
    if t is None:
        return {"any"}
    return set(t) if isinstance(t, list) else {t}


def _alternatives(doc: dict, schema: dict) -> list[dict]:
    schema = _resolve(doc, schema)
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return [_resolve(doc, s) for s in schema[key]]
    return [schema]


def _accepts(old_doc: dict, old: dict, new_doc: dict, new: dict, where: str) -> list[str]:
    """What ``old`` accepted, ``new`` must accept (request side)."""
    problems: list[str] = []
    new_alts = _alternatives(new_doc, new)
    for alt in _alternatives(old_doc, old):
        match = [n for n in new_alts if _types(alt) <= _types(n) or "any" in _types(n)]
        if not match:
            problems.append(f"{where}: no longer accepts {sorted(_types(alt))}")
            continue
        n = match[0]
        if "enum" in n and not set(map(json.dumps, alt.get("enum", [None]))) <= set(map(json.dumps, n["enum"])):
            problems.append(f"{where}: enum narrowed")
        if "minimum" in n and n["minimum"] > alt.get("minimum", float("-inf")):
            problems.append(f"{where}: minimum raised")
        if "maximum" in n and n["maximum"] < alt.get("maximum", float("inf")):
            problems.append(f"{where}: maximum lowered")
        if n.get("maxItems", float("inf")) < alt.get("maxItems", float("inf")):
            problems.append(f"{where}: maxItems lowered")
        if n.get("minItems", 0) > alt.get("minItems", 0):
            problems.append(f"{where}: minItems raised")
        if "items" in alt and "items" in n:
            problems += _accepts(old_doc, alt["items"], new_doc, n["items"], f"{where}[]")
        new_required = set(n.get("required", [])) - set(alt.get("required", []))
        if new_required:
            problems.append(f"{where}: new required fields {sorted(new_required)}")
        new_props = n.get("properties", {})
        for prop, schema in alt.get("properties", {}).items():
            if prop in new_props:
                problems += _accepts(old_doc, schema, new_doc, new_props[prop], f"{where}.{prop}")
            elif n.get("additionalProperties") is False:
                problems.append(f"{where}: field {prop} no longer accepted")
    return problems


def _provides(old_doc: dict, old: dict, new_doc: dict, new: dict, where: str) -> list[str]:
    """What ``old`` promised, ``new`` must still deliver (response side)."""
    old, new = _resolve(old_doc, old), _resolve(new_doc, new)
    problems: list[str] = []
    if "any" not in _types(old) and not _types(new) <= _types(old):
        problems.append(f"{where}: type changed from {sorted(_types(old))} to {sorted(_types(new))}")
    if "enum" in old and not set(map(json.dumps, new.get("enum", ["<any>"]))) <= set(map(json.dumps, old["enum"])):
        problems.append(f"{where}: new enum values")
    missing = set(old.get("required", [])) - set(new.get("required", []))
    if missing:
        problems.append(f"{where}: fields no longer guaranteed {sorted(missing)}")
    new_props = new.get("properties", {})
    for prop, schema in old.get("properties", {}).items():
        if prop not in new_props:
            problems.append(f"{where}: field {prop} removed")
        else:
            problems += _provides(old_doc, schema, new_doc, new_props[prop], f"{where}.{prop}")
    for key in ("items", "additionalProperties"):
        if isinstance(old.get(key), dict) and isinstance(new.get(key), dict):
            problems += _provides(old_doc, old[key], new_doc, new[key], f"{where}[]")
    return problems


def _body(op: dict) -> dict | None:
    return op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")


def breaking_changes(old: dict, new: dict) -> list[str]:
    """Ways ``new`` would break a client written against ``old``."""
    problems: list[str] = []
    for path, ops in old["paths"].items():
        for method, op in ops.items():
            nop = new["paths"].get(path, {}).get(method)
            where = f"{method.upper()} {path}"
            if nop is None:
                problems.append(f"{where} removed")
                continue
            old_body, new_body = _body(op), _body(nop)
            if old_body is not None and new_body is not None:
                problems += _accepts(old, old_body, new, new_body, f"{where} request")
            elif old_body is None and new_body is not None and nop["requestBody"].get("required"):
                problems.append(f"{where}: now requires a body")
            for param in nop.get("parameters", []):
                known = {(p["name"], p["in"]) for p in op.get("parameters", [])}
                if param.get("required") and (param["name"], param["in"]) not in known:
                    problems.append(f"{where}: new required parameter {param['name']}")
            for status, response in op.get("responses", {}).items():
                nresp = nop.get("responses", {}).get(status)
                if nresp is None:
                    problems.append(f"{where}: response {status} no longer documented")
                    continue
                old_schema = response.get("content", {}).get("application/json", {}).get("schema")
                new_schema = nresp.get("content", {}).get("application/json", {}).get("schema")
                if old_schema and new_schema:
                    problems += _provides(old, old_schema, new, new_schema, f"{where} {status}")
    return problems


# -- the tests -----------------------------------------------------------------------------------
@pytest.mark.parametrize("which", sorted(SNAPSHOTTED))
def test_no_change_breaks_the_clients_of_the_snapshot(tmp_path: Path, which: str) -> None:
    path, schema = SNAPSHOTTED[which]
    current = current_openapi(tmp_path, schema())
    snapshot = read_snapshot(path, current)
    problems = breaking_changes(snapshot, current)
    assert not problems, "breaking changes to the API contract:\n" + "\n".join(problems)


@pytest.mark.parametrize("which", sorted(SNAPSHOTTED))
def test_the_snapshot_is_current(tmp_path: Path, which: str) -> None:
    path, schema = SNAPSHOTTED[which]
    current = current_openapi(tmp_path, schema())
    snapshot = read_snapshot(path, current)
    assert current == snapshot, (
        "the OpenAPI document changed without breaking clients: review it and refresh the snapshot with "
        "UPDATE_SNAPSHOTS=1 .venv/bin/pytest tests/unit/test_gateway_openapi.py"
    )


def test_a_missing_snapshot_fails_and_is_not_written(tmp_path: Path) -> None:
    missing = tmp_path / "openapi.json"
    with pytest.raises(pytest.fail.Exception, match="missing"):
        read_snapshot(missing, {"paths": {}}, update=False)
    assert not missing.exists(), "a missing snapshot was written: the comparison would then always pass"
    assert read_snapshot(missing, {"paths": {}}, update=True) == {"paths": {}}  # only when asked


def test_the_served_demo_snapshot_is_the_demo_model() -> None:
    """The second snapshot documents the served schema's fields, not the test model's."""
    doc = json.loads(SERVED_OPENAPI_SNAPSHOT.read_text())
    body = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"][0]
    assert set(body["properties"]) == {f.name for f in served_schema().features}


def test_the_checker_catches_breaking_changes() -> None:
    snapshot = json.loads(OPENAPI_SNAPSHOT.read_text())
    assert breaking_changes(snapshot, snapshot) == []

    def mutated(change) -> list[str]:
        doc = copy.deepcopy(snapshot)
        change(doc)
        return breaking_changes(snapshot, doc)

    def record(d: dict) -> dict:
        return d["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"][0]

    def schemas(d: dict) -> dict:
        return d["components"]["schemas"]

    assert mutated(lambda d: record(d)["required"].append("cloud_cover_tenths"))
    assert mutated(lambda d: record(d)["properties"]["wind_direction"]["enum"].remove("W"))
    assert mutated(lambda d: record(d)["properties"]["pressure_mbar"].update(maximum=1000))
    assert mutated(lambda d: record(d)["properties"].pop("station_type"))
    assert mutated(lambda d: schemas(d)["PredictResponse"]["properties"].pop("request_id"))
    assert mutated(lambda d: schemas(d)["ModelRef"]["properties"]["version"].update(type="string"))
    assert mutated(lambda d: d["paths"].pop("/feedback"))
    assert mutated(lambda d: d["paths"]["/predict"]["post"]["responses"].pop("422"))
    # additions do not break clients
    assert not mutated(lambda d: schemas(d)["PredictResponse"]["properties"].update(extra={"type": "string"}))
    assert not mutated(lambda d: record(d)["properties"]["wind_direction"]["enum"].append("NW"))
    assert not mutated(lambda d: d["paths"].update({"/new": {"get": {"responses": {}}}}))


def test_the_contract_documents_fields_errors_and_examples() -> None:
    page = render(demo_schema())
    for f in demo_schema().features:
        assert f"`{f.name}`" in page
    for cls in vars(errors).values():
        if isinstance(cls, type) and issubclass(cls, errors.GatewayError) and cls is not errors.GatewayError:
            assert f"`{cls.code}`" in page
    for needle in ("degC", "-20 .. 40", "mapped to `other`", "422 `invalid_input`", "POST /feedback", "canary_share"):
        assert needle in page


def test_docs_contract_md_is_generated_from_the_served_schema() -> None:
    """docs/contract.md is the page of the solar_ghi schema (the integration tests check that this is the
    schema really served)."""
    schema = ModelSchema.model_validate_json(SERVED_SCHEMA.read_bytes())
    if UPDATE:
        CONTRACT_PAGE.write_text(render(schema))
    assert docs_main(["--schema", str(SERVED_SCHEMA), "--check", str(CONTRACT_PAGE)]) == 0, (
        "docs/contract.md is out of date: python -m gateway.docs --schema tests/snapshots/solar_ghi.schema.json "
        "--out docs/contract.md"
    )


@pytest.mark.parametrize("status", ["400", "413", "415", "422", "503"])
def test_every_predict_error_is_documented_with_the_error_shape(tmp_path: Path, status: str) -> None:
    doc = current_openapi(tmp_path)
    response = doc["paths"]["/predict"]["post"]["responses"][status]
    assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
