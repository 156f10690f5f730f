"""Records -> tensors: the one definition of how business fields become the model's input tensors.

A served model takes the two tensors :mod:`modelspec.schema` describes: ``numeric`` (FP32,
``[rows, n_numeric]``, NaN where a value is missing) and ``categorical`` (INT64,
``[rows, max(n_categorical, 1)]``, the index of the category, :attr:`CategoricalFeature.missing_index`
for a missing one). Everyone who builds them calls this module:

- the gateway validates ``/predict`` bodies with :func:`validate` (strict: every rule of the schema,
  one precise :class:`InvalidRecord` naming the field; ``gateway.contract`` maps it onto HTTP);
- training and registration encode frames with :func:`encode_columns` and the benchmarks encode
  generated records with :func:`encode_records` (lenient: a missing or unknown category is the
  missing index, a missing number is NaN; nothing is rejected);
- smoke tests turn a version's reference rows into tensors with :func:`reference_tensors`;
- :func:`feed` (and :meth:`Batch.feed`) names the tensors for an inference call, so no caller
  spells the tensor names.

Strict validation has two paths with identical results. :func:`validate_records` is the
reference: a per-record, per-field loop that raises the precise error. :func:`validate_columns`
handles a list of records column by column with C-level builtins and numpy (a couple of
microseconds per record instead of ~13); it decides only the cases it can decide exactly (valid
records, out-of-range values under the ``flag`` policy, unknown categories under ``fallback``) and
gives up on any other anomaly, so that :func:`validate` re-runs the reference path, which raises
the error.

This module is longer than the ~400 lines the project aims for because the two validation paths
must stay bit-identical: they are kept side by side, with the encoders that share their rule, so
that a change to one is seen next to the other (``tests/unit/test_contract_columnwise.py`` checks
them against each other).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat
from operator import itemgetter
from typing import Any

import numpy as np

from modelspec.bundle import Reference
from modelspec.rows import reference_arrays
from modelspec.schema import CategoricalFeature, ModelSchema, NumericFeature

__all__ = [
    "COLUMNWISE_MIN_RECORDS",
    "FLOAT32_MAX",
    "Batch",
    "Flag",
    "InvalidRecord",
    "RecordError",
    "TooManyRecords",
    "encode_columns",
    "encode_records",
    "feed",
    "records_of",
    "reference_tensors",
    "validate",
    "validate_columns",
    "validate_records",
]

# Unknown field names are echoed in the error only when they look like a field name; anything
# else (long, odd characters) is the client's payload and stays out of responses and logs.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
FLOAT32_MAX = float(np.finfo(np.float32).max)
"""The largest magnitude the FP32 ``numeric`` tensor holds; beyond it a value would reach the model as infinity."""

COLUMNWISE_MIN_RECORDS = 4
"""A list of at least this many records is validated column-wise (:func:`validate_columns`).

The column path has a fixed cost of a few dozen builtin and numpy calls, 10-15 us, about one to
two records through the per-record loop (7-13 us each on the demo schemas). Measured, it wins
from 2-3 records on valid input and from 3-4 with nulls, flags or many categorical features; at
4 it is faster in every case measured, and one record (or a short list) keeps the loop.
"""


class RecordError(ValueError):
    """Records that cannot become tensors; ``field`` says where (``[3].temperature_c``, ``body``).

    The message never quotes the client's values: it names the field and the rule.
    """

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidRecord(RecordError):
    """A record (or the body around it) does not satisfy the feature schema."""


class TooManyRecords(RecordError):
    """More records in one body than the caller allows."""


@dataclass(frozen=True)
class Flag:
    """A value accepted but worth telling the client about."""

    record: int
    field: str
    reason: str  # out_of_range | unknown_category (mapped to the declared fallback)

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"record": self.record, "field": self.field, "reason": self.reason}


def feed(schema: ModelSchema, numeric: Any, categorical: Any) -> dict[str, Any]:
    """The inputs of one inference call under the names the served model takes.

    Returns:
        ``{schema.numeric_tensor: numeric, schema.categorical_tensor: categorical}``.
    """
    return {schema.numeric_tensor: numeric, schema.categorical_tensor: categorical}


@dataclass
class Batch:
    """Validated records as the two model tensors, plus what was flagged."""

    numeric: np.ndarray
    categorical: np.ndarray
    flags: list[Flag] = field(default_factory=list)
    single: bool = False

    @property
    def rows(self) -> int:
        """Number of records."""
        return int(self.numeric.shape[0])

    def feed(self, schema: ModelSchema, rows: slice | None = None) -> dict[str, np.ndarray]:
        """The tensors (all rows, or the ``rows`` slice of them) named for an inference call (:func:`feed`)."""
        if rows is None:
            return feed(schema, self.numeric, self.categorical)
        return feed(schema, self.numeric[rows], self.categorical[rows])


# ---- strict: /predict bodies --------------------------------------------------------------------


def records_of(body: Any, max_records: int) -> tuple[list[Any], bool]:
    """Return (records, was_single) from a body that is one record or a list of records.

    Raises:
        InvalidRecord: the body is neither an object nor a non-empty list.
        TooManyRecords: the list has more than ``max_records`` records.
    """
    if isinstance(body, dict):
        return [body], True
    if isinstance(body, list):
        if not body:
            raise InvalidRecord("the list of records is empty; send at least one record", field="body")
        if len(body) > max_records:
            raise TooManyRecords(
                f"{len(body)} records in one request; the limit is {max_records}: split the request",
                field="body",
            )
        return body, False
    raise InvalidRecord("the body must be a JSON object (one record) or a list of records", field="body")


def validate(schema: ModelSchema, body: Any, max_records: int) -> Batch:
    """Validate ``body`` (one record or a list) against ``schema`` and build its tensors.

    Raises:
        InvalidRecord: naming the first bad field.
        TooManyRecords: the list is longer than ``max_records``.
    """
    records, single = records_of(body, max_records)
    if len(records) >= COLUMNWISE_MIN_RECORDS:
        batch = validate_columns(schema, records)
        if batch is not None:
            return batch
    return validate_records(schema, records, single)


def validate_records(schema: ModelSchema, records: list[Any], single: bool) -> Batch:
    """The reference path: validate ``records`` one by one; raise InvalidRecord naming the first bad field.

    ``single`` says the body was one record rather than a list (error paths then have no index).
    """
    numeric_features = schema.numeric
    categorical_features = schema.categorical
    known = {f.name for f in schema.features}
    numeric = np.empty((len(records), len(numeric_features)), dtype=np.float32)
    categorical = np.zeros((len(records), max(len(categorical_features), 1)), dtype=np.int64)
    flags: list[Flag] = []
    for i, record in enumerate(records):
        where = "" if single else f"[{i}]"
        if not isinstance(record, dict):
            raise InvalidRecord(f"record{where} must be a JSON object of named fields", field=where or "body")
        if len(record) > len(known) or any(k not in known for k in record):
            extra = next(k for k in record if k not in known)
            shown = extra if _SAFE_NAME.fullmatch(extra) else "?"
            raise InvalidRecord(
                "unknown field; the fields are listed in the OpenAPI schema at /docs and GET /models",
                field=_path(where, shown),
            )
        for j, f in enumerate(numeric_features):
            numeric[i, j] = _numeric(f, record, i, where, flags)
        for j, c in enumerate(categorical_features):
            categorical[i, j] = _categorical(c, record, i, where, flags)
    return Batch(numeric=numeric, categorical=categorical, flags=flags, single=single)


def _path(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _numeric(f: NumericFeature, record: dict[str, Any], i: int, where: str, flags: list[Flag]) -> float:
    path = _path(where, f.name)
    if f.name not in record:
        if f.nullable:
            return math.nan
        raise InvalidRecord(f"field {f.name!r} is required", field=path)
    value = record[f.name]
    if value is None:
        if f.nullable:
            return math.nan
        raise InvalidRecord(f"field {f.name!r} must not be null", field=path)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRecord(f"field {f.name!r} must be a number", field=path)
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a double
        number = math.inf
    if not math.isfinite(number) or abs(number) > FLOAT32_MAX:
        # the model's tensor is float32: a larger magnitude would reach it as infinity
        raise InvalidRecord(f"field {f.name!r} must be a finite number (magnitude below 3.4e38)", field=path)
    if number < f.minimum or number > f.maximum:
        if f.range_policy == "reject":
            raise InvalidRecord(
                f"field {f.name!r} is outside the trained range [{f.minimum:g}, {f.maximum:g}]", field=path
            )
        flags.append(Flag(i, f.name, "out_of_range"))
    return number


def _categorical(c: CategoricalFeature, record: dict[str, Any], i: int, where: str, flags: list[Flag]) -> int:
    path = _path(where, c.name)
    if c.name not in record or record[c.name] is None:
        if c.nullable:
            return c.missing_index
        reason = "is required" if c.name not in record else "must not be null"
        raise InvalidRecord(f"field {c.name!r} {reason}", field=path)
    value = record[c.name]
    if not isinstance(value, str):
        raise InvalidRecord(f"field {c.name!r} must be a string", field=path)
    index = c.index(value)
    if index is not None:
        return index
    if c.unknown_policy == "fallback" and c.fallback is not None:
        flags.append(Flag(i, c.name, "unknown_category"))
        return c.categories.index(c.fallback)
    shown = ", ".join(c.categories[:12]) + (", ..." if len(c.categories) > 12 else "")
    raise InvalidRecord(f"field {c.name!r} must be one of: {shown}", field=path)


@dataclass(frozen=True, slots=True)
class _CategoricalColumn:
    """How one categorical feature is read column-wise."""

    name: str
    getter: Callable[[dict[str, Any]], Any]
    lookup: dict[str | None, int]  # category -> index; None -> missing index when nullable
    allowed: frozenset[type]  # exact types that may reach ``lookup``: str, and NoneType when nullable
    fallback_index: int | None  # where an unknown category goes; None: it is rejected


@dataclass(frozen=True, slots=True)
class _ColumnPlan:
    """What the column path needs of a schema, computed once per schema object."""

    known: frozenset[str]
    numeric_names: tuple[str, ...]
    numeric_getter: Callable[[dict[str, Any]], Any] | None  # None when there are no numeric features
    lower: np.ndarray  # [F] max(minimum, -float32 max): a value inside [lower, upper] is valid as it is
    upper: np.ndarray  # [F] min(maximum, float32 max)
    reject: tuple[bool, ...]  # [F] range policy is reject
    nullable_columns: tuple[int, ...]
    categorical: tuple[_CategoricalColumn, ...]


_NUMBER_TYPES = frozenset({int, float, type(None)})  # None: NaN, checked against nullability after numpy
_DICT_ONLY = {dict}
_PLANS: dict[int, tuple[ModelSchema, _ColumnPlan]] = {}
_PLANS_MAX = 64


def _plan_of(schema: ModelSchema) -> _ColumnPlan:
    """The cached plan of ``schema`` (schemas are frozen; the entry holds the schema, so its id stays its own)."""
    entry = _PLANS.get(id(schema))
    if entry is not None and entry[0] is schema:
        return entry[1]
    plan = _build_plan(schema)
    if len(_PLANS) >= _PLANS_MAX:
        _PLANS.clear()
    _PLANS[id(schema)] = (schema, plan)
    return plan


def _getter(names: list[str]) -> Callable[[dict[str, Any]], Any] | None:
    """``itemgetter`` over ``names``, returning a tuple even for one name (None for no names)."""
    if not names:
        return None
    if len(names) == 1:
        name = names[0]
        return lambda record: (record[name],)
    return itemgetter(*names)


def _build_plan(schema: ModelSchema) -> _ColumnPlan:
    """Getters, bounds and category lookups of ``schema``, in tensor column order."""
    numeric = schema.numeric
    columns: list[_CategoricalColumn] = []
    for c in schema.categorical:
        lookup: dict[str | None, int] = {name: k for k, name in enumerate(c.categories)}
        allowed: frozenset[type] = frozenset({str})
        if c.nullable:
            lookup[None] = c.missing_index
            allowed = frozenset({str, type(None)})
        fallback_index = (
            c.categories.index(c.fallback) if c.unknown_policy == "fallback" and c.fallback is not None else None
        )
        columns.append(_CategoricalColumn(c.name, itemgetter(c.name), lookup, allowed, fallback_index))
    minimum = np.array([f.minimum for f in numeric], dtype=np.float64)
    maximum = np.array([f.maximum for f in numeric], dtype=np.float64)
    names = [f.name for f in numeric]
    return _ColumnPlan(
        known=frozenset(f.name for f in schema.features),
        numeric_names=tuple(names),
        numeric_getter=_getter(names),
        lower=np.maximum(minimum, -FLOAT32_MAX),
        upper=np.minimum(maximum, FLOAT32_MAX),
        reject=tuple(f.range_policy == "reject" for f in numeric),
        nullable_columns=tuple(j for j, f in enumerate(numeric) if f.nullable),
        categorical=tuple(columns),
    )


def validate_columns(schema: ModelSchema, records: list[Any]) -> Batch | None:
    """Validate a list of records column by column; None when the reference path must decide.

    The result, when there is one, is identical to ``validate_records(schema, records, False)``:
    same tensors bit for bit, same flags in the same order. Anything else (a record that is not a
    dict, an unknown field, a missing required value, a value of the wrong type, a value that is
    not finite or too large for float32, a range violation under ``reject``, an unknown category
    under ``reject``) returns None, so that the per-record path raises its precise error.
    """
    plan = _plan_of(schema)
    n = len(records)
    if not records or set(map(type, records)) != _DICT_ONLY:
        return None
    known = plan.known
    if max(map(len, records)) > len(known):
        return None  # more fields than the schema has: some are unknown
    names = plan.numeric_names
    width = len(names)
    getter = plan.numeric_getter
    try:
        # every field present: with no more fields than the schema, none is unknown
        flat: list[Any] = list(chain.from_iterable(map(getter, records))) if getter is not None else []
        columns = [list(map(c.getter, records)) for c in plan.categorical]
    except KeyError:
        # a field is absent (fine when nullable, as if null): check names, read with get
        if not known.issuperset(chain.from_iterable(records)):
            return None
        flat = list(chain.from_iterable(map(r.get, names) for r in records))
        columns = [list(map(dict.get, records, repeat(c.name))) for c in plan.categorical]

    # numeric: exact int/float/None only (bool, str, subclasses go to the reference path)
    types = set(map(type, flat))
    if not types <= _NUMBER_TYPES:
        return None
    try:
        values = np.array(flat, dtype=np.float64).reshape(n, width)  # None -> NaN
    except (OverflowError, TypeError, ValueError):  # an int too large for a double
        return None
    marks: list[tuple[int, int, str, str]] = []
    inside = (values >= plan.lower) & (values <= plan.upper)  # NaN (null) compares False
    outside = inside.size - int(np.count_nonzero(inside))
    # nulls (and absent fields) of nullable features: the only NaN allowed
    nulls = sum(flat[j::width].count(None) for j in plan.nullable_columns) if type(None) in types else 0
    # every null is outside; when the outside cells are as many as those nulls, they are those
    # nulls: nothing else is, and no required feature is null
    if outside and outside != nulls and not _numeric_outside(plan, values, inside, nulls, marks):
        return None

    categorical = np.zeros((n, max(len(columns), 1)), dtype=np.int64)
    for k, (c, column) in enumerate(zip(plan.categorical, columns, strict=True)):
        if not set(map(type, column)) <= c.allowed:
            return None
        indexes = list(map(c.lookup.get, column, repeat(-1)))
        if -1 in indexes:
            if c.fallback_index is None:
                return None
            for i, index in enumerate(indexes):
                if index == -1:
                    indexes[i] = c.fallback_index
                    marks.append((i, width + k, c.name, "unknown_category"))
        categorical[:, k] = indexes

    marks.sort()  # the reference order: by record, then numeric then categorical features in schema order
    flags = [Flag(i, name, reason) for i, _j, name, reason in marks]
    return Batch(numeric=values.astype(np.float32), categorical=categorical, flags=flags, single=False)


def _numeric_outside(
    plan: _ColumnPlan,
    values: np.ndarray,
    inside: np.ndarray,
    nulls: int,
    marks: list[tuple[int, int, str, str]],
) -> bool:
    """Look at the values not inside [lower, upper]; append out_of_range marks; False when the reference must decide.

    NaN must come from the ``nulls`` (nulls or absent fields of nullable features) only: a null in
    a required feature or a NaN sent as a value makes more NaN than that.
    """
    nan = np.isnan(values)
    nan_count = int(np.count_nonzero(nan))
    if nan_count:
        if nan_count != nulls:
            return False
        inside |= nan
    rows, cols = np.nonzero(~inside)
    if not rows.size:
        return True
    numbers = values[rows, cols].tolist()
    for i, j, number in zip(rows.tolist(), cols.tolist(), numbers, strict=True):
        # outside [max(minimum, -float32 max), min(maximum, float32 max)]: too large, or outside the range
        if plan.reject[j] or abs(number) > FLOAT32_MAX:
            return False
        marks.append((i, j, plan.numeric_names[j], "out_of_range"))
    return True


# ---- lenient: training frames, generated records, reference rows -------------------------------


def encode_columns(
    columns: Mapping[str, Iterable[Any]], schema: ModelSchema, rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """The model's (numeric FP32, categorical INT64) tensors for ``rows`` rows given column by column.

    Lenient, for data the caller trusts (training frames, generated records): nothing is rejected
    or flagged. A numeric column holds numbers, with None or NaN where a value is missing (text is
    the caller's to parse first, e.g. ``pandas.to_numeric``); numbers that are not float arrays go
    through float64, as ``float(value)`` does, before the float32 tensor. In a categorical column
    anything that is not one of the feature's categories (None, an unknown string, a non-string)
    is missing: :attr:`CategoricalFeature.missing_index`.

    Args:
        columns: one column (a sequence, numpy array or pandas Series) per schema feature name.
        schema: gives the column order of each tensor.
        rows: the length of every column.
    """
    numeric = np.empty((rows, len(schema.numeric)), dtype=np.float32)
    for j, f in enumerate(schema.numeric):
        column = columns[f.name]
        if not (isinstance(column, np.ndarray) and column.dtype.kind == "f"):
            column = np.asarray(column, dtype=np.float64)  # None -> NaN
        numeric[:, j] = column
    categorical = np.zeros((rows, max(len(schema.categorical), 1)), dtype=np.int64)
    for j, c in enumerate(schema.categorical):
        lookup = {name: k for k, name in enumerate(c.categories)}
        missing = c.missing_index
        categorical[:, j] = [lookup.get(v, missing) if isinstance(v, str) else missing for v in columns[c.name]]
    return numeric, categorical


def encode_records(records: Sequence[Mapping[str, Any]], schema: ModelSchema) -> tuple[np.ndarray, np.ndarray]:
    """:func:`encode_columns` of records (an absent field is missing); for records known to be valid.

    For valid records the tensors are those :func:`validate` builds, bit for bit; unlike it, this
    neither checks nor flags anything.
    """
    columns = {f.name: [r.get(f.name) for r in records] for f in schema.features}
    return encode_columns(columns, schema, len(records))


def reference_tensors(reference: Reference) -> tuple[np.ndarray, np.ndarray]:
    """The tensors of a version's reference rows (``reference.json``: a missing number is null there)."""
    return reference_arrays(reference.model_dump())
