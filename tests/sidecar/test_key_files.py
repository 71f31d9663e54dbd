"""Provider keys from a directory of files (``--provider-keys-dir``), as Kubernetes mounts a
Secret: one file per key, named by the variable the catalog gives (``api_key_env``)."""

from __future__ import annotations

import logging

import pytest
from sidecar_helpers import MODEL, Stack, key_env, key_value, openai_client

from sidecar.cli import main
from sidecar.keys import MAX_KEY_FILE_BYTES, EnvThenFiles

MSGS = [{"role": "user", "content": "hi"}]


async def test_a_key_from_a_mounted_file_reaches_its_provider_and_is_scrubbed(
    stack: Stack, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    router = await stack.start_router()
    keys = tmp_path / "provider-keys"
    keys.mkdir()
    (keys / key_env("alpha")).write_text(key_value("alpha") + "\n")  # as `echo` writes it
    sc = await stack.start_sidecar(router.grpc_address, environ={}, provider_keys_dir=str(keys))
    answer = await openai_client(sc).chat.completions.create(
        model=MODEL, messages=MSGS, max_tokens=3
    )
    assert answer.model_extra["routing"]["provider"] == "alpha"
    assert stack.providers["alpha"].requests[-1].auth_ok  # the file's key, without its newline
    # A key read from a file is a key like any other: never written to a log.
    with caplog.at_level(logging.INFO):
        logging.getLogger("sidecar.test").warning("upstream said: %s", key_value("alpha"))
    assert key_value("alpha") not in caplog.text


async def test_the_environment_wins_and_a_missing_file_is_a_missing_key(
    stack: Stack, tmp_path
) -> None:
    await stack.add_providers({"alpha": {}, "beta": {}})
    stack.write_catalog()
    router = await stack.start_router()
    keys = tmp_path / "provider-keys"
    keys.mkdir()
    (keys / key_env("alpha")).write_text("sk-stale-file-key")
    environ = {key_env("alpha"): key_value("alpha")}  # beta: neither a variable nor a file
    sc = await stack.start_sidecar(
        router.grpc_address, environ=environ, provider_keys_dir=str(keys)
    )
    for _ in range(3):
        answer = await openai_client(sc).chat.completions.create(
            model=MODEL, messages=MSGS, max_tokens=3
        )
        assert answer.model_extra["routing"]["provider"] == "alpha"
    assert stack.providers["alpha"].requests[-1].auth_ok
    assert stack.counts()["beta"] == 0 and sc.keys.missing == {"beta": key_env("beta")}


def test_only_plain_names_are_looked_up_and_oversized_files_are_not_keys(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "OK_KEY").write_text("sk-ok")
    (tmp_path / "HUGE_KEY").write_bytes(b"x" * (MAX_KEY_FILE_BYTES + 1))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "K").write_text("sk-nested")
    files = EnvThenFiles({}, str(tmp_path))
    assert files.get("OK_KEY") == "sk-ok"
    assert files.get("sub/K") is None and files.get("..") is None and files.get("") is None
    with caplog.at_level(logging.WARNING, logger="sidecar.keys"):
        assert files.get("HUGE_KEY") is None
        assert files.get("sub") is None  # a directory: unreadable as a key
    named = [getattr(r, "api_key_env", None) for r in caplog.records]
    assert named == ["HUGE_KEY", "sub"]  # each names its file's variable...
    assert not any("xxxx" in r.getMessage() for r in caplog.records)  # ...never the content


def test_a_keys_dir_that_is_not_a_directory_is_refused_at_start(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "nope")
    assert main(["--provider-keys-dir", missing]) == 2
    assert capsys.readouterr().err.strip() == (
        f'router-sidecar: --provider-keys-dir "{missing}" is not a directory'
    )
