"""Router replicas sharing one view through Redis (``router-service --redis URL``).

Off by default: without ``--redis`` the router is one process with its state
in memory and never opens a Redis connection. With it, every replica given
the same Redis and ``--redis-prefix`` shares outcomes, sketches and health.

Design (one stream, one checkpoint, permits):

* **Outcome stream** (``<prefix>:outcomes``, a Redis Stream). Each batch a
  replica accepts is applied to its own sketches at once and appended to a
  bounded in-memory buffer; a background task XADDs the buffer (pipelined).
  Every replica reads the stream (XREAD BLOCK) and applies its peers'
  outcomes to its sketches and health. Digests are mergeable and counters
  add, so sketches do not care about order.
* **Applied batch ids** ride on the same stream (field ``b``, see
  ``codec``): once a batch that carries an id is applied to the end, its
  (caller, sender, sequence) is published after its outcomes, and every peer
  remembers it in its ``CallerLedger``, so a sidecar's resend that a Service
  sends to a peer is acknowledged there as a duplicate instead of counted a
  second time. Not before the batch is applied: a replica that dies mid-batch
  must not make its peers refuse the resend.
* **Health in fleet order.** Health is order-dependent (consecutive
  failures, probe results), so while Redis is up every replica, the origin
  included, feeds health in *stream order*: the origin applies its own batch
  when the stream brings it back (~1 ms), or locally after ``echo_timeout_s``
  if it does not (Redis slow or down). Ejection jitter comes from a random
  source seeded the same on every replica, so the same outcomes in the same
  order give the same states and the same ejection times.
* **Checkpoint** (``<prefix>:checkpoint``). Every ``checkpoint_interval_s``
  the holder of a lease (``SET NX PX``) writes its whole view: every
  endpoint's live bucket digests and counters, health state (and the jitter
  generator's state), its stream position ``X``, its id, its last batch
  number and the batches whose health it has not applied yet. A starting
  replica loads it and replays the stream after ``X``, skipping the writer's
  own batches the checkpoint already holds: exact, and as fast as the
  checkpoint is small (it does not grow with traffic, only with endpoints).
* **Probe permits** (``<prefix>:probe:<provider>|<model>``, ``SET NX PX``
  renewed while probing): only the replica holding an endpoint's permit lets
  half-open probes through, so N replicas let ``probe_permits`` probes
  through in total, not N times as many.
* **Bounds.** Stream: approximate MAXLEN and MINID trimming to
  ``stream_retention_s`` on Redis's clock (TIME; stream ids carry it, and a
  replica's clock may be off from it), and the key expires after it with no
  writer.
  Checkpoint: one key, size ~ endpoints x buckets x 2.4 KB, expires after a
  day. Lease and permits: PX. The publish buffer: ``buffer_max_outcomes``,
  oldest dropped first and counted.

Redis trouble never reaches the request path: RankProviders and outcome
ingestion make no Redis call (they use ``publish`` and ``filter_probes``,
both in-memory). While Redis is unreachable each replica serves and learns
from its own traffic, buffers what peers should see, reconnects with
jittered exponential backoff, then publishes the buffer and reads what it
missed (from its last stream position).
"""

from router_service.replication.config import RedisSettingsError, ReplicationConfig

__all__ = ["RedisSettingsError", "ReplicationConfig"]
