from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import json
import uuid

import pydantic
import pytest

from tidebase import CheckpointDict, hash_input, stable_stringify, to_json_data
from tidebase._json import revalidate, wrap_replayed


def test_hash_input__matches_protocol_vectors() -> None:
    assert hash_input(None) == "74234e98afe7498fb5daf1f36ac2d78acc339464f950703b8c019892f982b90b"
    value = {"b": [1, 2.5, {"z": 1, "a": "é"}], "a": True}
    assert stable_stringify(value) == '{"a":true,"b":[1,2.5,{"a":"é","z":1}]}'
    assert hash_input(value) == "05d21c384d979fdae9662306fdfcdbfa1b1d753345062beebff9e220d4dfb562"


def test_hash_input__matches_official_client_for_plain_json() -> None:
    # The official tidebase 0.7.0 writes Python floats as json.dumps does (1.0 stays 1.0).
    value = {"n": 1.0, "big": 10**20, "s": 'a"b\n', "nested": [{"y": None, "x": [False]}]}
    assert stable_stringify(value) == (
        '{"big":100000000000000000000,"n":1.0,"nested":[{"x":[false],"y":null}],"s":"a\\"b\\n"}'
    )


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: int
    label: str = "p"
    _cache: object = None
    derived: int = dataclasses.field(init=False, default=0)


class Ticket(pydantic.BaseModel):
    title: str
    due: dt.date
    tags: set[str] = set()


def test_to_json_data__common_python_values() -> None:
    moment = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    data = to_json_data(
        {
            "when": moment,
            "day": dt.date(2026, 1, 2),
            "at": dt.time(3, 4),
            "id": ident,
            "color": Color.RED,
            "tags": {"b", "a"},
            "pair": (1, 2),
            "point": Point(1, 2),
            "ticket": Ticket(title="t", due=dt.date(2026, 1, 2), tags={"x"}),
        }
    )
    assert data == {
        "when": "2026-01-02T03:04:05+00:00",
        "day": "2026-01-02",
        "at": "03:04:00",
        "id": str(ident),
        "color": "red",
        "tags": ["a", "b"],
        "pair": [1, 2],
        "point": {"x": 1, "y": 2, "label": "p"},
        "ticket": {"title": "t", "due": "2026-01-02", "tags": ["x"]},
    }
    json.dumps(data)  # plain JSON all the way down


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (decimal.Decimal("5"), 5),
        (decimal.Decimal("5.00"), 5),
        (decimal.Decimal("0.5"), 0.5),
        (decimal.Decimal("0.1"), 0.1),
        (decimal.Decimal("1.00000000000000000001"), "1.00000000000000000001"),
        (decimal.Decimal("NaN"), "NaN"),
    ],
)
def test_to_json_data__decimal_is_never_lossy(value: decimal.Decimal, expected: object) -> None:
    assert to_json_data(value) == expected


@pytest.mark.parametrize("value", [b"bytes", object(), float("nan"), {"k": float("inf")}])
def test_to_json_data__rejects_non_json(value: object) -> None:
    with pytest.raises(TypeError):
        to_json_data(value)


def test_to_json_data__error_names_the_path() -> None:
    with pytest.raises(TypeError, match=r"\$\.outer\[1\]"):
        to_json_data({"outer": [1, object()]})


def test_set_hash__is_order_independent() -> None:
    assert hash_input({"s": {3, 1, 2}}) == hash_input({"s": [1, 2, 3]})


def test_pydantic_and_dataclass_round_trip_through_revalidate() -> None:
    ticket = Ticket(title="t", due=dt.date(2026, 1, 2), tags={"x"})
    stored = json.loads(json.dumps(to_json_data(ticket)))
    assert revalidate(stored, Ticket) == ticket
    point = Point(1, 2)
    assert revalidate(json.loads(json.dumps(to_json_data(point))), Point) == point
    assert revalidate([to_json_data(ticket)], list[Ticket]) == [ticket]


def test_wrap_replayed__allows_attribute_reads() -> None:
    data = wrap_replayed({"output": {"title": "t", "items": [{"n": 1}]}})
    assert isinstance(data, CheckpointDict)
    assert data.output.title == "t"
    assert data.output["items"][0].n == 1
    assert data == {"output": {"title": "t", "items": [{"n": 1}]}}
    with pytest.raises(AttributeError, match="no field 'missing'"):
        _ = data.missing
