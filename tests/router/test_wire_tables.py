"""The enum tables between domain and wire cover every value, both ways."""

from __future__ import annotations

from router_common.domain import ErrorClass
from router_common.pb import router_pb2
from router_common.wire_enums import ERROR_CLASS_FROM_WIRE, ERROR_CLASS_TO_WIRE


def test_every_error_class_has_one_wire_value_and_back() -> None:
    assert set(ERROR_CLASS_TO_WIRE) == set(ErrorClass)
    wire_values = set(router_pb2.ErrorClass.values()) - {router_pb2.ERROR_CLASS_UNSPECIFIED}
    assert set(ERROR_CLASS_FROM_WIRE) == wire_values
    assert all(ERROR_CLASS_FROM_WIRE[ERROR_CLASS_TO_WIRE[c]] is c for c in ErrorClass)
