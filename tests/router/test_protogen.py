"""The committed generated code must match what the proto produces today."""

import shutil
from pathlib import Path

import pytest

from router_common import protogen


def test_generated_code_is_fresh() -> None:
    stale = protogen.stale_files(protogen.generate())
    assert stale == [], f"run `python -m router_common.protogen`; stale: {stale}"


def test_generated_imports_point_inside_our_package() -> None:
    grpc_module = protogen.generate()["router_pb2_grpc.py"]
    assert "from router_common.pb import router_pb2" in grpc_module
    assert "from router.v1" not in grpc_module


def test_a_comment_that_breaks_the_generated_code_is_refused(tmp_path: Path) -> None:
    # grpc_tools copies the service comment into a docstring: a backslash there
    # (`\\u` when documenting JSON escapes) made router_pb2_grpc.py a SyntaxError
    # while the staleness test, comparing text, stayed green.
    root = tmp_path / "proto"
    shutil.copytree(protogen.PROTO_ROOT, root)
    proto = root / protogen.PROTO_FILE
    text = proto.read_text()
    proto.write_text(
        text.replace("service Router {", "// non-ASCII as `\\u` escapes\nservice Router {")
    )
    with pytest.raises(RuntimeError, match=r"router_pb2_grpc\.py does not compile"):
        protogen.generate(root)
