"""Values with the types agent code returns, for the JSON round-trip tests."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import uuid
from dataclasses import dataclass

import pydantic


class Priority(enum.Enum):
    LOW = "low"
    HIGH = "high"


@dataclass
class TicketDC:
    id: uuid.UUID
    created: dt.datetime
    price: decimal.Decimal
    priority: Priority
    tags: set[str]


class TicketModel(pydantic.BaseModel):
    id: uuid.UUID
    created: dt.datetime
    price: decimal.Decimal
    priority: Priority
    tags: set[str]


TICKET_ID = uuid.UUID("12345678-1234-5678-1234-567812345678")
CREATED = dt.datetime(2024, 5, 17, 9, 30, 15, 250000, tzinfo=dt.UTC)
FIELDS = {
    "id": TICKET_ID,
    "created": CREATED,
    "price": decimal.Decimal("12.50"),
    "priority": Priority.HIGH,
    "tags": {"ui", "crash", "backend"},
}
# What every one of those values is in the checkpoint (and on replay).
EXPECTED_JSON = {
    "id": "12345678-1234-5678-1234-567812345678",
    "created": "2024-05-17T09:30:15.250000+00:00",
    "price": 12.5,
    "priority": "high",
    "tags": ["backend", "crash", "ui"],
}
# A step input with the same kinds of values, plus a Decimal that no float can hold exactly.
STEP_INPUT = {**FIELDS, "exact": decimal.Decimal("0.1000000000000000000001"), "when": dt.date(2024, 5, 17)}
EXPECTED_INPUT_JSON = {**EXPECTED_JSON, "exact": "0.1000000000000000000001", "when": "2024-05-17"}
