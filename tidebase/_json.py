"""Turning Python values into checkpointable JSON data, and back.

Checkpoints hold JSON. :func:`to_json_data` converts the values agent code
usually returns into plain JSON data (``dict``/``list``/``str``/``int``/
``float``/``bool``/``None``):

==========================  ==================================================
dataclass instance          object of its ``init`` fields, skipping ``_private``
                            ones (Pydantic AI's ``AgentRunResult`` → ``{"output": …}``)
Pydantic model              pydantic's JSON encoding, with sets sorted
datetime / date / time      ISO 8601 string
UUID                        string
Decimal                     integer if integral, float if the float is exact,
                            otherwise the decimal string (never a lossy float)
Enum                        its value
set / frozenset             list sorted by the stable encoding of its items
tuple                       list
==========================  ==================================================

Anything else (bytes, NaN/Infinity, arbitrary objects) raises ``TypeError``
with the path of the offending value.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import functools
import hashlib
import json
import math
import uuid
from collections.abc import Mapping
from typing import Any

__all__ = ["CheckpointDict", "hash_input", "revalidate", "stable_stringify", "to_json_data", "wrap_replayed"]


def _key(key: Any, path: str) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, enum.Enum):
        return _key(key.value, path)
    if isinstance(key, uuid.UUID):
        return str(key)
    if key is None or isinstance(key, (bool, int, float)):
        return json.dumps(key)  # same spelling json.dumps uses for non-str keys
    raise TypeError(f"{path}: object key of type {type(key).__name__} is not JSON")


def _decimal(value: decimal.Decimal) -> int | float | str:
    if not value.is_finite():
        return str(value)
    if value == value.to_integral_value():
        return int(value)
    as_float = float(value)
    if decimal.Decimal(repr(as_float)) == value:
        return as_float
    return str(value)


def to_json_data(value: Any, path: str = "$") -> Any:
    """Convert ``value`` to plain JSON data, or raise ``TypeError``."""
    if value is None or isinstance(value, (str, bool, int)):
        if isinstance(value, enum.Enum):
            return to_json_data(value.value, path)
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{path}: {value!r} is not valid JSON")
        return value
    if isinstance(value, Mapping):
        return {_key(k, path): to_json_data(v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_data(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, enum.Enum):
        return to_json_data(value.value, path)
    if isinstance(value, (set, frozenset)):
        items = [to_json_data(v, f"{path}[]") for v in value]
        return sorted(items, key=stable_stringify)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return _decimal(value)
    model_dump = getattr(type(value), "model_dump", None)
    if callable(model_dump) and hasattr(type(value), "model_fields"):
        # Pydantic's JSON rules for the leaves, but sets sorted: ``mode="json"`` would keep a set's
        # iteration order, which depends on the process's hash seed, and so would the input hash.
        return to_json_data(_pydantic_tree(value.model_dump(mode="python")), path)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_json_data(getattr(value, f.name), f"{path}.{f.name}")
            for f in dataclasses.fields(value)
            if f.init and not f.name.startswith("_")
        }
    encoded = _UNKNOWN if isinstance(value, (bytes, bytearray)) else _pydantic_jsonable(value)
    if encoded is not _UNKNOWN:
        return to_json_data(encoded, path)
    raise TypeError(f"{path}: value of type {type(value).__qualname__} is not JSON-serializable")


_UNKNOWN = object()


def _pydantic_tree(value: Any) -> Any:
    from pydantic_core import to_jsonable_python

    if isinstance(value, Mapping):
        return {to_jsonable_python(k): _pydantic_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_pydantic_tree(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_pydantic_tree(v) for v in value), key=lambda v: stable_stringify(to_json_data(v)))
    return to_jsonable_python(value)


def _pydantic_jsonable(value: Any) -> Any:
    """Types pydantic knows how to put in JSON (URLs, paths, bytes, ...), when it is installed."""
    try:
        from pydantic_core import PydanticSerializationError, to_jsonable_python
    except ImportError:
        return _UNKNOWN
    try:
        return to_jsonable_python(value)
    except PydanticSerializationError:
        return _UNKNOWN


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def stable_stringify(value: Any) -> str:
    """Compact JSON with object keys sorted; identical to the official SDKs
    for plain JSON data (non-ASCII kept literally, floats as Python writes them)."""
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: str(kv[0]))
        return "{" + ",".join(f"{_dump(str(k))}:{stable_stringify(v)}" for k, v in items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(stable_stringify(v) for v in value) + "]"
    return _dump(value)


def hash_input(value: Any) -> str:
    """SHA-256 hex of the stable encoding of ``value`` (a step's ``inputHash``)."""
    data = to_json_data(value)
    return hashlib.sha256(stable_stringify(data).encode("utf-8")).hexdigest()


class CheckpointDict(dict[str, Any]):
    """A JSON object read back from a checkpoint.

    It is a plain ``dict`` that also allows attribute reads, so code written
    against the live value keeps working on replay: ``result.output`` works
    whether ``result`` is the live ``AgentRunResult`` or its checkpoint.
    Keys that collide with ``dict`` methods (``items``, ``keys``…) need
    ``result["items"]``.
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"checkpointed object has no field {name!r} (fields: {sorted(self)})") from None


def wrap_replayed(data: Any) -> Any:
    """Deep-copy JSON data, turning objects into :class:`CheckpointDict`."""
    if isinstance(data, dict):
        return CheckpointDict({k: wrap_replayed(v) for k, v in data.items()})
    if isinstance(data, list):
        return [wrap_replayed(v) for v in data]
    return data


def _new_adapter(tp: Any) -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(tp)


_cached_adapter = functools.lru_cache(maxsize=256)(_new_adapter)


def _adapter(tp: Any) -> Any:
    try:
        return _cached_adapter(tp)
    except TypeError:  # an unhashable type expression: build it uncached
        return _new_adapter(tp)


def revalidate(data: Any, returns: Any) -> Any:
    """Validate JSON ``data`` into the type ``returns``.

    Uses ``pydantic.TypeAdapter`` when pydantic is installed (models,
    dataclasses, ``list[Model]``, ``TypedDict``…). Without pydantic,
    dataclasses are rebuilt from their fields and other types are called
    with the data.
    """
    try:
        adapter = _adapter(returns)
    except ImportError:
        adapter = None
    if adapter is not None:
        return adapter.validate_python(data)
    if isinstance(returns, type) and dataclasses.is_dataclass(returns) and isinstance(data, dict):
        return returns(**data)
    return returns(data)
