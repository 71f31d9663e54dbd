"""Every bound of the contract, defined once.

The router enforces these on what it receives, the sidecar on what it sends
and accepts, and the proto's comments state each next to its field
(``proto/router/v1/router.proto``; ``tests/test_limits.py`` checks they agree).
They keep one caller from making either process do unbounded work or hold
unbounded state: every list is capped before anything iterates over it.
"""

from __future__ import annotations

# -- names ------------------------------------------------------------------

#: Characters in one provider name (catalog, routing preferences, outcomes).
MAX_NAME_LEN = 128
#: Characters in one model id (``creator/name``).
MAX_MODEL_ID_LEN = 2 * MAX_NAME_LEN

# -- routing requests ---------------------------------------------------------

#: Provider names in each of ``order``, ``only`` and ``ignore``.
MAX_PROVIDER_LIST = 64
#: Token estimates (``estimated_input_tokens``, ``max_output_tokens``) above this
#: are nonsense and would overflow cost arithmetic.
MAX_TOKENS = 1_000_000_000

# -- sidecar requests (the OpenAI-compatible API, not the proto) ----------------

#: Models one chat completion request may name (``model`` plus OpenRouter's
#: ``models`` / Vercel's ``providerOptions.gateway.models``, duplicates of
#: ``model`` dropped): each is ranked, so the list is capped before that.
MAX_MODELS_PER_REQUEST = 8
#: A request's per-provider first-token timeout
#: (``providerOptions.gateway.providerTimeouts``), milliseconds: at least this,
#: at most ``MAX_FIRST_TOKEN_TIMEOUT_MS``.
MIN_PROVIDER_TIMEOUT_MS = 1.0

# -- rankings -----------------------------------------------------------------

#: The per-endpoint first-token timeout and hedge delay the router suggests
#: (``RankedEndpoint.first_token_timeout_ms`` / ``hedge_after_ms``); a client
#: ignores values outside (0, this].
MAX_FIRST_TOKEN_TIMEOUT_MS = 600_000.0  # 10 minutes, as MAX_TTFT_MS

# -- outcomes -----------------------------------------------------------------

#: Outcomes in one RecordOutcomeRequest (one RecordOutcome call or one
#: StreamOutcomes message).
MAX_OUTCOMES_PER_BATCH = 1000
#: Rejections listed in one acknowledgement (the count is always complete).
MAX_REJECTIONS_REPORTED = 100
#: Upper bounds beyond which an outcome's value is a bug, not a measurement.
MAX_TTFT_MS = 600_000.0  # 10 minutes
MAX_TOKENS_PER_SECOND = 100_000.0
MAX_OUTPUT_TOKENS = 10_000_000
MAX_DURATION_MS = 3_600_000.0  # 1 hour
MAX_RETRY_AFTER_S = 86_400.0
#: How far an outcome's ``started_at`` may lie in the past (older is outside
#: every window anyway) or in the future (clock skew between pods).
MAX_OUTCOME_AGE_S = 86_400.0
MAX_FUTURE_SKEW_S = 60.0
#: The longest duration a command-line setting may give (timeouts, intervals), both
#: processes: gRPC turns a timeout into an absolute deadline, and a huge one
#: (``--rank-timeout-s 1e300``) overflowed into one already past.
MAX_SETTING_SECONDS = 86_400.0

# -- catalog ------------------------------------------------------------------

#: A price per million tokens above this is a typo.
MAX_PRICE_PER_MILLION = 10_000.0
MAX_PROVIDERS = 1_000
MAX_MODELS = 10_000

# -- callers and exactly-once delivery ------------------------------------------

#: Named callers in one tokens file (``--auth-tokens``).
MAX_AUTH_CALLERS = 1_000
#: Characters in ``BatchId.sender``.
MAX_SENDER_LEN = MAX_NAME_LEN
#: Senders whose recent batch ids the router remembers per caller (least
#: recently seen forgotten first), and batch ids remembered per sender. A sender
#: numbers its batches upwards; an id at or below the highest forgotten one
#: is treated as already applied.
MAX_SENDERS_PER_CALLER = 64
BATCH_IDS_REMEMBERED = 1_024
#: Callers whose state (rate-limit bucket, batch ids) the router keeps at once;
#: the least recently seen is forgotten first.
MAX_TRACKED_CALLERS = 4_096
