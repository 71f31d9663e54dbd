"""How RouterApp switches replica sharing on (kept out of app.py for easy merges)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

from router_common.domain import Clock
from router_service.callers import CallerLedger
from router_service.core import RouterCore
from router_service.http_api import REGISTRY_KEY
from router_service.replication.config import ReplicationConfig
from router_service.replication.metrics import ReplicationCollector
from router_service.replication.replicator import RedisReplicator

log = logging.getLogger(__name__)


async def start_replication(
    config: ReplicationConfig,
    core: RouterCore,
    clock: Clock,
    on_data: Callable[[], None],
    http_app: web.Application | None,
    ledger: CallerLedger | None = None,
) -> RedisReplicator:
    """Attach a replicator to ``core``, start it and wait (bounded) for the shared state.

    ``ledger`` learns the batch ids peers applied (exactly-once across replicas).
    """
    replicator = RedisReplicator(
        config,
        core,
        clock,
        on_data=on_data,
        on_batch_ids=ledger.learn if ledger is not None else lambda ids: None,
    )
    core.replication = replicator
    if http_app is not None and REGISTRY_KEY in http_app:
        http_app[REGISTRY_KEY].register(ReplicationCollector(replicator))
    log.info(
        "sharing state with peer replicas through redis",
        extra={
            "redis": config.redacted_url,
            "prefix": config.prefix,
            "replica": replicator.replica_id,
        },
    )
    if config.unprotected:
        log.warning(
            "redis without credentials: anything that reaches it can write the outcomes and "
            "health every replica applies, past --auth-tokens and the per-caller limits; give "
            "Redis a password (requirepass or an ACL user) and pass --redis-password-file",
            extra={"redis": config.redacted_url},
        )
    await replicator.start()
    await replicator.wait_restored(config.startup_timeout_s)
    return replicator
