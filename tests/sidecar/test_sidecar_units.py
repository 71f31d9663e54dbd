"""Pure parts of the sidecar: preferences, SSE scanning, ranking fallbacks, bounds, config."""

from __future__ import annotations

import orjson
import pytest

from router_common.catalog import parse_catalog
from router_common.pb import router_pb2
from sidecar.config import SidecarSettings, settings_from_args, split_host_port
from sidecar.metrics import SidecarMetrics
from sidecar.outcomes import OutcomeReporter
from sidecar.preferences import RequestError, parse_request
from sidecar.ranking_client import Cooldowns, Ranking, RankingClient, Route, rank_from_catalog
from sidecar.redaction import KeyRedactor
from sidecar.streaming import SSEScanner
from sidecar.upstream import classify_status, parse_retry_after

MSGS = [{"role": "user", "content": "x" * 40}]

CATALOG = parse_catalog("""
providers:
  a: {base_url: "http://a/v1", api_key_env: A, zero_data_retention: true}
  b: {base_url: "http://b/v1", api_key_env: B}
  c: {base_url: "http://c/v1", api_key_env: C, zero_data_retention: true}
models:
  m/x:
    endpoints:
      - {provider: a, upstream_model: ax, input_price_per_million: 3, output_price_per_million: 3}
      - {provider: b, upstream_model: bx, input_price_per_million: 1, output_price_per_million: 1}
      - {provider: c, upstream_model: cx, input_price_per_million: 2, output_price_per_million: 9}
""")


def test_openrouter_preferences() -> None:
    req = parse_request(
        {
            "model": "m/x",
            "messages": MSGS,
            "max_tokens": 100,
            "provider": {
                "order": ["b"],
                "only": ["a", "b"],
                "ignore": ["c"],
                "sort": "throughput",
                "zdr": True,
                "max_price": {"prompt": 1.5, "completion": 2},
                "allow_fallbacks": False,
                "preferred_max_latency": {"p90": 0.5},
                "preferred_min_throughput": 50,
                "require_parameters": True,
            },
        }
    )
    p = req.preferences
    assert p.sort == router_pb2.SORT_BY_TPS and list(p.order) == ["b"]
    assert list(p.only) == ["a", "b"] and list(p.ignore) == ["c"]
    assert p.zero_data_retention and not p.allow_fallbacks
    assert p.max_price.input_per_million == 1.5 and p.max_price.output_per_million == 2
    assert p.preferred_max_ttft_ms == 500 and p.percentile == router_pb2.PERCENTILE_P90
    assert p.preferred_min_tps == 50
    assert req.estimated_input_tokens == 10 and req.max_output_tokens == 100
    assert "provider" not in req.body and req.body["max_tokens"] == 100


def test_vercel_preferences_and_agreement() -> None:
    req = parse_request(
        {
            "model": "m/x",
            "messages": MSGS,
            "providerOptions": {
                "gateway": {"order": ["a"], "sort": "ttft", "zeroDataRetention": True}
            },
            "provider": {"sort": "latency", "zdr": True},
        }
    )
    assert req.preferences.sort == router_pb2.SORT_BY_TTFT
    assert req.preferences.zero_data_retention and list(req.preferences.order) == ["a"]
    assert "providerOptions" not in req.body


def test_conflict_names_both_fields() -> None:
    with pytest.raises(RequestError) as err:
        parse_request(
            {
                "model": "m/x",
                "messages": MSGS,
                "provider": {"zdr": False},
                "providerOptions": {"gateway": {"zeroDataRetention": True}},
            }
        )
    assert err.value.param == "provider.zdr,providerOptions.gateway.zeroDataRetention"


def test_defaults_apply_and_cache_key_ignores_tokens() -> None:
    a = parse_request({"model": "m/x", "messages": MSGS}, default_sort="cost", default_zdr=True)
    b = parse_request({"model": "m/x", "messages": MSGS * 3}, default_sort="cost", default_zdr=True)
    assert a.preferences.sort == router_pb2.SORT_BY_COST and a.preferences.zero_data_retention
    assert a.cache_key == b.cache_key


def test_rank_from_catalog_enforces_filters() -> None:
    prefs = router_pb2.RoutingPreferences(zero_data_retention=True)
    routes, excluded = rank_from_catalog(CATALOG, "m/x", prefs)
    assert [r.provider for r in routes] == ["a", "c"]
    assert excluded == [
        {
            "provider": "b",
            "reason": {
                "code": "not_zdr",
                "detail": "provider b does not offer zero data retention",
                "numbers": {"zero_data_retention": 0.0},
            },
        }
    ]
    prefs = router_pb2.RoutingPreferences(order=["c"], ignore=["b"])
    assert [r.provider for r in rank_from_catalog(CATALOG, "m/x", prefs)[0]] == ["c", "a"]
    prefs = router_pb2.RoutingPreferences(sort=router_pb2.SORT_BY_COST)
    assert [r.provider for r in rank_from_catalog(CATALOG, "m/x", prefs, 1000, 0)[0]] == [
        "b",
        "c",
        "a",
    ]
    prefs = router_pb2.RoutingPreferences()
    prefs.max_price.output_per_million = 5
    assert [r.provider for r in rank_from_catalog(CATALOG, "m/x", prefs)[0]] == ["a", "b"]
    with pytest.raises(RequestError) as err:  # a provider the catalog does not know at all
        rank_from_catalog(CATALOG, "m/x", router_pb2.RoutingPreferences(only=["zzz"]))
    assert err.value.code == "invalid_routing_preferences"
    assert str(err.value) == 'preferences.only: provider "zzz" is not in the catalog'
    with pytest.raises(RequestError) as err:  # nothing left after the filters
        prefs = router_pb2.RoutingPreferences(only=["b"], zero_data_retention=True)
        rank_from_catalog(CATALOG, "m/x", prefs)
    assert err.value.code == "no_eligible_provider"
    with pytest.raises(RequestError) as err:
        rank_from_catalog(CATALOG, "m/none", router_pb2.RoutingPreferences())
    assert err.value.status == 404


def test_cooldowns_move_failed_endpoint_back_until_expiry() -> None:
    now = [100.0]
    cd = Cooldowns(max_entries=2, clock=lambda: now[0])
    routes = tuple(Route(n, "u", "", False, n) for n in "abc")
    cd.fail("m", "a", 5.0)
    assert [r.provider for r in cd.apply("m", routes)] == ["b", "c", "a"]
    probe = (Route("a", "u", "", False, "a", router_wants_it=True), *routes[1:])
    assert next(r.provider for r in cd.apply("m", probe)) == "a"  # the router says otherwise
    now[0] += 5.1
    assert [r.provider for r in cd.apply("m", routes)] == ["a", "b", "c"]
    for p in "xyz":  # bounded
        cd.fail("m", p, 5.0)
    assert len(cd._until) == 2


async def test_ranking_cache_is_bounded_lru() -> None:
    client = RankingClient(SidecarSettings(rank_cache_entries=3), None, CATALOG)
    for i in range(10):
        client._put(("m/x", bytes([i])), Ranking((), "router"))
    assert client.cache_size == 3
    assert list(client._cache) == [("m/x", bytes([i])) for i in (7, 8, 9)]


async def test_router_absent_uses_catalog_or_503() -> None:
    req = parse_request({"model": "m/x", "messages": MSGS})
    client = RankingClient(SidecarSettings(), None, CATALOG)
    ranking = await client.rank(req)
    assert ranking.source == "catalog" and [r.provider for r in ranking.routes] == ["a", "b", "c"]
    with pytest.raises(RequestError) as err:
        await RankingClient(SidecarSettings(), None, None).rank(req)
    assert err.value.status == 503


def test_sse_scanner_holds_partial_lines_and_stops_at_done() -> None:
    s = SSEScanner()
    role = b'data: {"id":"c1","choices":[{"delta":{"role":"assistant"}}]}\n\n'
    tok = b'data: {"id":"c1","choices":[{"delta":{"content":"Hi"}}]}\n\n'
    usage = b'data: {"id":"c1","choices":[],"usage":{"completion_tokens":7}}\n\n'
    assert s.feed(role, 1.0) == role and s.first_token_at is None
    out = s.feed(tok[:20], 2.0)
    assert out == b""  # partial line held back
    # The usage chunk (no choices) is held back, for the end of the stream.
    assert s.feed(tok[20:] + usage + b"data: [DONE]\n\njunk", 3.0) == tok
    assert s.first_token_at == 3.0 and s.usage_tokens == 7 and s.done and s.complete
    assert s.output_tokens == 7 and s.last_id == "c1"
    assert s.final_chunks(None) == usage


def test_sse_scanner_counts_without_usage_and_sees_errors() -> None:
    s = SSEScanner()
    for _ in range(3):
        s.feed(b'data: {"choices":[{"delta":{"content":"a"}}]}\n', 1.0)
    assert s.output_tokens == 3 and not s.complete
    s.feed(b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}', 1.0)
    s.flush(2.0)
    assert s.complete
    e = SSEScanner()
    e.feed(b'data: {"error":{"message":"boom"}}\n\n', 1.0)
    assert e.error == {"message": "boom"} and not e.complete


def _delta(text: str, finish: str = "null", usage: str = "null") -> bytes:
    return (
        b'data: {"id":"c","choices":[{"delta":{"content":"' + text.encode() + b'"},'
        b'"finish_reason":' + finish.encode() + b'}],"usage":' + usage.encode() + b"}\n\n"
    )


def test_sse_scanner_after_the_first_token_counts_in_bulk_and_still_sees_the_rest() -> None:
    s = SSEScanner()
    s.feed(_delta("first"), 1.0)
    block = _delta("a") + _delta("") + _delta("b") + b": keep-alive comment\n\n"
    assert s.feed(block, 2.0) == block
    assert s.content_chunks == 3 and s.first_token_at == 1.0  # the empty one is no token
    # A block with a finish (spaced, as some providers write it), usage and [DONE] is
    # read line by line: nothing in it is missed.
    tail = (
        _delta("c")
        + b'data: {"id":"c2","choices":[{"delta":{},"finish_reason": "stop"}]}\n\n'
        + _delta("", finish='"stop"', usage='{"completion_tokens":9}')
        + b"data: [DONE]\n\n"
    )
    s.feed(tail, 3.0)
    assert s.finish_seen and s.done and s.usage_tokens == 9 and s.output_tokens == 9
    e = SSEScanner()
    e.feed(_delta("first"), 1.0)
    e.feed(_delta("a") + b'data: {"error":{"message":"boom"}}\n\n', 2.0)
    assert e.error == {"message": "boom"}


def test_classification_and_retry_after() -> None:
    assert classify_status(429).value == "rate_limited"
    assert classify_status(503).value == "server_error"
    assert classify_status(408).value == "server_error"
    assert classify_status(401).value == "auth"
    assert classify_status(422).value == "client_error"
    for odd in (101, 201, 204, 302, 304, 307):  # no chat API answers so: the endpoint misbehaves
        assert classify_status(odd).value == "server_error"
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    for garbled in ("inf", "-inf", "nan", "1e400"):  # float() reads them; no seconds
        assert parse_retry_after(garbled) is None
    key = "sk-live-abcdefghijklmnopqrstuvwxyz"
    redactor = KeyRedactor([key])
    assert key.encode() not in redactor.scrub(f"key={key}".encode())
    assert b"abcdefghijklmnop" not in redactor.scrub(key[:20].encode())
    assert redactor.scrub_text(f"Bearer {key}") == "Bearer [REDACTED][REDACTED]"


def test_escaped_text_without_a_key_is_relayed_byte_for_byte() -> None:
    """The JSON-escape search wakes on escaped ASCII only and rewrites nothing that
    does not decode to a key: Go's \\u003c, PHP's \\/, escaped non-ASCII text."""
    key = "sk-live-abcdefghijklmnopqrstuvwxyz"
    redactor = KeyRedactor([key]).only(key)
    block = (
        b'data: {"choices":[{"delta":{"content":"a \\u003c b \\/ caf\\u00e9 \\u4e2d'
        b' sk-live-abc\\\\u0064"}}]}\n\n'
    )
    assert redactor.scrub(block) is block
    # Escaped in mixed case and in part, the key is still found.
    spelled = "".join(f"\\u{ord(c):04X}" if i % 3 else c for i, c in enumerate(key))
    assert redactor.scrub(f'"{spelled}"'.encode()) == b'"[REDACTED][REDACTED]"'


async def test_outcome_queue_is_bounded_and_counts_drops() -> None:
    metrics = SidecarMetrics()
    rep = OutcomeReporter(
        object(),
        metrics,
        max_queue=5,
        batch_size=2,  # type: ignore[arg-type]
        flush_interval_s=1,
        send_timeout_s=1,
        max_backoff_s=1,
    )
    for i in range(8):
        rep.submit(router_pb2.Outcome(model="m/x", provider=f"p{i}", success=True))
    assert rep.depth == 5 and rep.dropped == 3
    assert [o.provider for o in rep._queue] == ["p3", "p4", "p5", "p6", "p7"]  # newest kept
    rep._form_batches()  # batches awaiting acknowledgement count towards the bound
    assert rep.depth == 0 and rep.backlog == 5
    rep.submit(router_pb2.Outcome(model="m/x", provider="p8", success=True))
    assert rep.dropped == 5 and rep.backlog == 4  # the oldest batch (p3, p4) went whole
    assert [b.batch_id.sequence for b in rep._pending] == [2, 3]
    text = metrics.render().decode()
    assert "router_sidecar_outcomes_dropped_total 5.0" in text


def test_config_flags_env_and_defaults() -> None:
    s = settings_from_args(
        ["--router", "r:1", "--max-attempts", "5"],
        {
            "SIDECAR_LISTEN": "0.0.0.0:9000",
            "SIDECAR_DEFAULT_ZDR": "true",
            "SIDECAR_ROUTER": "ignored:2",
        },
    )
    assert s.router == "r:1" and s.max_attempts == 5 and s.default_zdr
    assert (s.listen_host, s.listen_port) == ("0.0.0.0", 9000)
    d = settings_from_args([], {})
    assert d.listen == "127.0.0.1:8080" and d.fallback_catalog is None
    assert split_host_port("[::1]:80", "x") == ("::1", 80)
    assert split_host_port("8081", "127.0.0.1") == ("127.0.0.1", 8081)
    with pytest.raises(SystemExit):
        settings_from_args([], {"SIDECAR_MAX_ATTEMPTS": "lots"})


def test_cached_copy_undoes_one_shot_probe_and_exploration() -> None:
    probe = Route("a", "u", "", False, "a", router_wants_it=True)
    rest = tuple(Route(n, "u", "", False, n) for n in "bc")
    ranking = Ranking((probe, *rest), "router")
    reused = ranking.for_reuse()
    assert [r.provider for r in reused.routes] == ["b", "c", "a"]
    assert not any(r.router_wants_it for r in reused.routes)
    assert ranking.routes[0].provider == "a"  # the triggering request keeps it
    plain = Ranking(rest, "router")
    assert plain.for_reuse() is plain


def test_reused_load_balance_ranking_is_redrawn_per_request_by_weight() -> None:
    import random
    from collections import Counter

    heavy = Route("a", "u", "", False, "a", weight=0.6)
    light = Route("b", "u", "", False, "b", weight=0.3)
    lighter = Route("c", "u", "", False, "c", weight=0.1)
    degraded = Route("d", "u", "", False, "d", weight=0.9, deprioritized=True)
    ranking = Ranking((heavy, light, lighter, degraded), "router", {"strategy": "load_balance"})
    rng = random.Random(5)
    firsts = Counter(ranking.redraw(rng).routes[0].provider for _ in range(3000))
    assert set(firsts) == {"a", "b", "c"}  # not pinned to the router's one draw
    assert 0.55 < firsts["a"] / 3000 < 0.65 and 0.05 < firsts["c"] / 3000 < 0.15
    assert all(ranking.redraw(rng).routes[-1].provider == "d" for _ in range(50))
    ordered = Ranking((heavy, light, lighter), "router", {"strategy": "order"})
    assert ordered.redraw(rng) is ordered  # sort/order rankings keep their order


@pytest.mark.parametrize(
    ("chunk", "is_token"),
    [
        # The OpenAI shape the fast path reads by bytes.
        (b'{"id":"c","choices":[{"delta":{"content":"Hi"},"finish_reason":null}]}', True),
        # ... and with the "usage":null every chunk carries under include_usage.
        (
            b'{"id":"c","choices":[{"delta":{"content":"Hi"},"finish_reason":null}],"usage":null}',
            True,
        ),
        # An empty string is not a token; nor is a role-only chunk.
        (
            b'{"id":"c","choices":[{"delta":{"role":"assistant","content":""},'
            b'"finish_reason":null}]}',
            False,
        ),
        # Escaped quotes inside a string never look like structure.
        (
            b'{"id":"c","choices":[{"delta":{"role":"assistant","name":"\\"content\\":\\"x"},'
            b'"finish_reason":null}]}',
            False,
        ),
        # Reasoning and tool calls take the JSON path and still count as the first token.
        (
            b'{"id":"c","choices":[{"delta":{"reasoning_content":"hmm"},"finish_reason":null}]}',
            True,
        ),
        (
            b'{"id":"c","choices":[{"delta":{"tool_calls":[{"index":0}]},"finish_reason":null}]}',
            True,
        ),
    ],
)
def test_first_token_detection_fast_and_slow_paths(chunk: bytes, is_token: bool) -> None:
    scanner = SSEScanner()
    scanner.feed(b"data: " + chunk + b"\n\n", 5.0)
    assert (scanner.first_token_at == 5.0) is is_token
    assert scanner.output_tokens == int(is_token)


def test_usage_numbers_on_a_content_chunk_are_read() -> None:
    """Some providers put the usage on the last content chunk: never skipped by bytes."""
    scanner = SSEScanner()
    scanner.feed(
        b'data: {"id":"c","choices":[{"delta":{"content":"Hi"},"finish_reason":null}],'
        b'"usage":{"completion_tokens":7}}\n\n',
        5.0,
    )
    assert scanner.first_token_at == 5.0 and scanner.output_tokens == 7


def test_model_rewrite_covers_every_spelling_and_never_touches_content() -> None:
    """Compact, spaced, or quoted inside a token: only real ``model`` members change."""
    s = SSEScanner("creator/name", want_usage=False)
    compact = b'data: {"id":"c","model":"up-1","choices":[{"delta":{"content":"a"}}]}\n\n'
    spaced = b'data: {"id":"c", "model" : "up-1", "choices":[{"delta":{"content":"b"}}]}\n\n'
    sneaky = (
        b'data: {"id":"c","model":"up-1",'
        b'"choices":[{"delta":{"content":"\\"model\\":\\"x\\""}}]}\n\n'
    )
    out = s.feed(compact + spaced + sneaky, 1.0)
    assert out.count(b'"model":"creator/name"') == 3
    assert b"up-1" not in out and b'\\"model\\":\\"x\\"' in out
    assert s.upstream_model == "up-1"


def test_finish_chunk_is_held_for_routing_and_usage_only_when_asked() -> None:
    finish = b'data: {"id":"c","model":"up","choices":[{"delta":{},"finish_reason":"stop"}]}\n\n'
    usage = b'data: {"id":"c","model":"up","choices":[],"usage":{"completion_tokens":3}}\n\n'
    for want_usage in (False, True):
        s = SSEScanner("m/x", want_usage=want_usage)
        s.feed(_delta("a") + finish + usage + b"data: [DONE]\n\n", 1.0)
        tail = s.final_chunks({"provider": "p"})
        events = [ln for ln in tail.split(b"\n") if ln.startswith(b"data: ")]
        assert len(events) == (2 if want_usage else 1)
        assert b'"routing"' in events[-1] and b'"model":"m/x"' in events[-1]
        assert (b'"choices":[]' in events[-1]) is want_usage
        assert b'"up"' not in tail and s.output_tokens == 3


def test_sse_scanner_end_of_stream_from_the_chunks_it_parsed() -> None:
    """The role chunk is no token (its id is kept), a token in a second choice is
    one, and the usage chunk carries its cost and ``routing`` in the app's model."""
    s = SSEScanner("app/model")
    role = b'data: {"id":"c9","model":"up","choices":[{"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'  # noqa: E501
    assert s.feed(role, 1.0) == role.replace(b'"up"', b'"app/model"')
    assert s.first_token_at is None and s.last_id == "c9"
    two = b'data: {"id":"c9","model":"up","choices":[{"index":0,"delta":{"content":""},"finish_reason":null},{"index":1,"delta":{"content":"x"},"finish_reason":null}]}\n\n'  # noqa: E501
    s.feed(two, 2.0)
    assert s.first_token_at == 2.0
    fin = b'data: {"id":"c9","model":"up","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'  # noqa: E501
    usage = b'data: {"id":"c9","model":"up","choices":[],"usage":{"completion_tokens":3,"prompt_tokens":2}}\n\n'  # noqa: E501
    assert s.feed(fin + usage + b"data: [DONE]\n\n", 3.0) == b""
    s.set_usage_cost(0.5)
    tail = s.final_chunks({"provider": "p"})
    events = [orjson.loads(line[6:]) for line in tail.split(b"\n\n") if line]
    assert [e["model"] for e in events] == ["app/model", "app/model"]
    assert events[0]["choices"][0]["finish_reason"] == "stop" and "routing" not in events[0]
    assert events[1]["usage"] == {"completion_tokens": 3, "prompt_tokens": 2, "cost": 0.5}
    assert events[1]["routing"] == {"provider": "p"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # A setting that must be above 0 says so for nan and negatives too (they read
        # ">= 0", and 0 was then refused as well; found by the README audit).
        (
            ["--request-deadline-s", "nan"],
            '--request-deadline-s must be a finite number above 0, got "NaN"',
        ),
        (["--chunk-timeout-s", "-5"], "--chunk-timeout-s must be a finite number above 0, got -5"),
        (["--cooldown-s", "-1"], "--cooldown-s must be a finite number >= 0, got -1"),
        (["--max-attempts", "0"], "--max-attempts must be above 0, got 0"),
        (["--max-body-bytes", "0"], "--max-body-bytes must be above 0, got 0"),
        (["--hedge-budget-share", "2"], "--hedge-budget-share must be a share from 0 to 1, got 2"),
        (["--outcome-batch-size", "5000"], "--outcome-batch-size must be at most 1000"),
        (["--default-sort", "fastest"], '--default-sort must be one of ["cost", "latency"'),
        (["--listen", "bogus"], '--listen: expected HOST:PORT, got "bogus"'),
        (["--listen", "127.0.0.1:99999"], '--listen: port must be 0..65535, got "127.0.0.1:99999"'),
        (["--listen", "65536"], '--listen: port must be 0..65535, got "65536"'),
        (["--router", "127.0.0.1:0"], '--router: port must be 1..65535, got "127.0.0.1:0"'),
        (["--router", "dns:///r.example:70000"], "--router: port must be 1..65535"),
    ],
)
def test_a_bad_setting_is_refused_naming_its_flag(argv: list[str], message: str) -> None:
    """Found by an audit: these started cleanly (a nan deadline disabled every deadline,
    a bad default sort made every request a 500), or were written as Python writes them."""
    with pytest.raises(SystemExit) as exc:
        settings_from_args(["--router", "127.0.0.1:1", *argv], {})
    assert isinstance(exc.value.code, str) and message in exc.value.code


def test_the_cli_exits_2_with_one_line_for_a_bad_setting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """As the module says (it exited 1: SystemExit with a message)."""
    from sidecar.cli import main

    assert main(["--router", "127.0.0.1:1", "--listen", "bogus"]) == 2
    err = capsys.readouterr().err
    assert err == 'router-sidecar: --listen: expected HOST:PORT, got "bogus"\n'


def test_a_bad_setting_from_the_environment_names_the_variable() -> None:
    with pytest.raises(
        SystemExit,
        match=r"SIDECAR_REQUEST_DEADLINE_S \(sets --request-deadline-s\) must be a finite number",
    ):
        settings_from_args([], {"SIDECAR_REQUEST_DEADLINE_S": "inf"})
    assert settings_from_args([], {"SIDECAR_RANK_CACHE_TTL_S": "0"}).rank_cache_ttl_s == 0


def test_a_bad_log_level_is_one_line_naming_the_flag_in_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Found by an audit: it read ``log level must be ..., got 'loud'`` (a Python repr of
    the value lowercased, and no flag)."""
    from sidecar.cli import main

    assert main(["--router", "127.0.0.1:1", "--log-level", "LOUD"]) == 2
    err = capsys.readouterr().err
    assert err == (
        'router-sidecar: --log-level must be one of debug, info, warning, error, got "LOUD"\n'
    )
