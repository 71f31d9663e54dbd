"""A Redis ACL user limited to the README's keys and commands is enough to share state.

Operators of a shared or managed Redis give the router a user limited to its
keys and commands; the README names them. TIME joined the list with the
retention trim on Redis's clock: a user granted the older list (without it)
must keep replicating (on the replica's own clock, warned once) rather than
never load the shared state. Two in-process routers, real redis-server with ACLs.
"""

from __future__ import annotations

import re

import pytest

from router_common.domain import EndpointKey
from router_service.replication.config import ReplicationConfig
from tests.conftest import loopback_router, wait_for
from tests.replication.fleet import MODEL, REPO_ROOT, outcome

pytestmark = pytest.mark.timeout(60)

CEREBRAS = EndpointKey(MODEL, "cerebras")
PASSWORD = "acl-pw-0123456789"


def readme_acl() -> tuple[str, list[str]]:
    """The key pattern and commands the README grants the router's user."""
    text = " ".join((REPO_ROOT / "README.md").read_text().split())
    found = re.search(r"the keys `(~<prefix>:\*)` and the commands `([^`]+)`", text)
    assert found, "README lost the ACL sentence"
    return found.group(1), found.group(2).split()


@pytest.mark.parametrize("without", [None, "+time"])
async def test_an_acl_user_with_the_readmes_commands_shares_state(
    tmp_path, redis_server, caplog, without: str | None
) -> None:
    pattern, commands = readme_acl()
    grants = [c for c in commands if c != without]
    redis_server.client().execute_command(
        "ACL", "SETUSER", "router", "on", f">{PASSWORD}", pattern.replace("<prefix>", "acl"),
        "-@all", *grants,
    )  # fmt: skip
    url = f"redis://router:{PASSWORD}@127.0.0.1:{redis_server.port}/0"
    config = ReplicationConfig(
        url=url, prefix="acl", checkpoint_interval_s=0.1, startup_timeout_s=5.0
    )
    apps = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            app = loopback_router(tmp_path / name, replication=config, watch_catalog=False)
            apps.append(app)
            await app.start()
        a, b = apps
        assert a.replicator.restored and b.replicator.restored
        a.core.record([outcome("cerebras")] * 3)
        await wait_for(lambda: b.replicator.stats.applied == 3)
        await wait_for(
            lambda: (
                a.replicator.stats.checkpoints_written + b.replicator.stats.checkpoints_written >= 2
            )
        )
        assert a.replicator.stats.errors == b.replicator.stats.errors == 0
        refused = [r for r in caplog.records if r.getMessage().startswith("redis refused TIME")]
        assert len(refused) == (0 if without is None else 2)  # once per replica
        assert PASSWORD not in caplog.text
    finally:
        for app in apps:
            await app.stop()
