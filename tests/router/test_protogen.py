"""The committed generated code must match what the proto produces today."""

from router_common import protogen


def test_generated_code_is_fresh() -> None:
    stale = protogen.stale_files(protogen.generate())
    assert stale == [], f"run `python -m router_common.protogen`; stale: {stale}"


def test_generated_imports_point_inside_our_package() -> None:
    grpc_module = protogen.generate()["router_pb2_grpc.py"]
    assert "from router_common.pb import router_pb2" in grpc_module
    assert "from router.v1" not in grpc_module
