"""The tables between the proto's enums and the domain's, kept once for both sides.

proto3 enums are open: a newer peer may send a number this build does not
know, so every ``*_FROM_WIRE`` lookup is a ``.get`` whose miss the caller
turns into an error naming the field.
"""

from __future__ import annotations

from router_common.domain import ErrorClass, Sort
from router_common.pb import router_pb2

SORT_FROM_WIRE: dict[router_pb2.SortBy, Sort | None] = {
    router_pb2.SORT_BY_UNSPECIFIED: None,
    router_pb2.SORT_BY_COST: Sort.COST,
    router_pb2.SORT_BY_TTFT: Sort.TTFT,
    router_pb2.SORT_BY_TPS: Sort.TPS,
}
SORT_TO_WIRE: dict[Sort | None, router_pb2.SortBy] = {v: k for k, v in SORT_FROM_WIRE.items()}
PERCENTILE_FROM_WIRE: dict[router_pb2.Percentile, float] = {
    router_pb2.PERCENTILE_UNSPECIFIED: 0.5,
    router_pb2.PERCENTILE_P50: 0.5,
    router_pb2.PERCENTILE_P75: 0.75,
    router_pb2.PERCENTILE_P90: 0.9,
    router_pb2.PERCENTILE_P95: 0.95,
    router_pb2.PERCENTILE_P99: 0.99,
}
PERCENTILE_TO_WIRE: dict[float, router_pb2.Percentile] = {
    0.5: router_pb2.PERCENTILE_P50,
    0.75: router_pb2.PERCENTILE_P75,
    0.9: router_pb2.PERCENTILE_P90,
    0.95: router_pb2.PERCENTILE_P95,
    0.99: router_pb2.PERCENTILE_P99,
}
ERROR_CLASS_FROM_WIRE: dict[router_pb2.ErrorClass, ErrorClass] = {
    router_pb2.ERROR_CLASS_NONE: ErrorClass.NONE,
    router_pb2.ERROR_CLASS_CONNECT: ErrorClass.CONNECT,
    router_pb2.ERROR_CLASS_TIMEOUT: ErrorClass.TIMEOUT,
    router_pb2.ERROR_CLASS_RATE_LIMITED: ErrorClass.RATE_LIMITED,
    router_pb2.ERROR_CLASS_SERVER_ERROR: ErrorClass.SERVER_ERROR,
    router_pb2.ERROR_CLASS_AUTH: ErrorClass.AUTH,
    router_pb2.ERROR_CLASS_CLIENT_ERROR: ErrorClass.CLIENT_ERROR,
    router_pb2.ERROR_CLASS_STREAM_ABORT: ErrorClass.STREAM_ABORT,
    router_pb2.ERROR_CLASS_CANCELLED: ErrorClass.CANCELLED,
}
ERROR_CLASS_TO_WIRE: dict[ErrorClass, router_pb2.ErrorClass] = {
    v: k for k, v in ERROR_CLASS_FROM_WIRE.items()
}
