"""``router-demo``: catalog derivation, incident measurements, and one unattended end-to-end run.

The end-to-end test is the issue's acceptance test: ``router-demo --duration``
must finish, exit 0, and report every incident detected and routed around, and
it must leave no process or port behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from router_common.catalog import load_catalog
from router_demo.catalog import (
    derive_catalog,
    load_source,
    model_providers,
    provider_specs,
    write_catalog,
)
from router_demo.cli import MIN_DURATION_S, parse_args
from router_demo.incidents import (
    IncidentPlan,
    IncidentResult,
    detected_after,
    evaluate,
    plan_incidents,
    probe_detector,
    recovered_after,
    routed_around_after,
    routed_around_for,
)
from router_demo.processes import pid_alive, port_open
from router_demo.summary import SUMMARY_KEY, build_summary, print_summary
from router_demo.traffic import RequestRecord, preference_body, share_by_provider

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------- catalog


def test_derived_catalog_points_every_provider_at_localhost_and_keeps_the_rest(
    tmp_path: Path,
) -> None:
    source = load_source()
    ports = {name: 20000 + i for i, name in enumerate(source["providers"])}
    derived = derive_catalog(source, ports)
    for name, spec in derived["providers"].items():
        assert spec["base_url"] == f"http://127.0.0.1:{ports[name]}/v1"
        original = source["providers"][name]
        assert spec["api_key_env"] == original["api_key_env"]
        assert spec.get("zero_data_retention") == original.get("zero_data_retention")
    assert derived["models"] == source["models"]
    # The source is untouched (deep copy), and the result loads in the router.
    assert source["providers"]["groq"]["base_url"].startswith("https://")
    catalog = load_catalog(write_catalog(derived, tmp_path))
    assert set(catalog.models) == set(source["models"])
    assert {s.name for s in provider_specs(derived)} == set(source["providers"])
    assert "deepinfra" in model_providers(derived)["zai/glm-4.7"]


def test_a_provider_without_a_local_port_is_refused() -> None:
    source = load_source()
    ports = {name: 20000 for name in list(source["providers"])[1:]}
    with pytest.raises(ValueError, match="no local port"):
        derive_catalog(source, ports)


def test_example_catalog_has_at_least_four_providers_with_both_zdr_policies() -> None:
    text = (ROOT / "router_common/examples/catalog.yaml").read_text()
    specs = provider_specs(yaml.safe_load(text))
    assert len(specs) >= 4
    assert {s.zero_data_retention for s in specs} == {True, False}


# ---------------------------------------------------------------- traffic


def test_preference_bodies_use_both_conventions() -> None:
    providers = ["cerebras", "together", "deepinfra"]
    order = ("deepinfra", "together")
    assert preference_body("cost", providers, order, None) == {"provider": {"sort": "price"}}
    assert preference_body("ttft", providers, order, None) == {
        "providerOptions": {"gateway": {"sort": "ttft"}}
    }
    assert preference_body("zdr", providers, order, None) == {
        "providerOptions": {"gateway": {"zeroDataRetention": True}}
    }
    assert preference_body("order", providers, order, None) == {
        "providerOptions": {"gateway": {"order": ["deepinfra", "together"]}}
    }
    assert preference_body("pinned", providers, order, "together") == {
        "provider": {"only": ["together"]}
    }
    assert preference_body("balance", providers, order, None) == {}


def _rec(t: float, label: str = "cost", first: str | None = "a", served: str | None = None,
         ok: bool = True, model: str = "m/x") -> RequestRecord:  # fmt: skip
    return RequestRecord(
        t=t, model=model, label=label, status=200 if ok else 503, ok=ok,
        provider=served or first, first_provider=first, attempts=1, latency_s=0.1,
    )  # fmt: skip


def test_share_by_provider_counts_successful_answers_in_the_window() -> None:
    recs = [_rec(1, served="a"), _rec(5, served="a"), _rec(6, served="b"), _rec(7, ok=False)]
    assert share_by_provider(recs, since=4.0) == {"a": 0.5, "b": 0.5}
    assert share_by_provider(recs, since=100.0) == {}


# ---------------------------------------------------------------- measurements


def test_incident_plan_fits_the_duration_and_caps_the_slowdown() -> None:
    fail, slow = plan_incidents(60, "deepinfra", "cerebras")
    assert (fail.kind, fail.provider, fail.start_s, fail.end_s) == ("fail", "deepinfra", 9, 24)
    assert (slow.kind, slow.provider, slow.start_s, slow.end_s) == ("slowdown", "cerebras", 21, 36)
    assert fail.control_body() == {"kind": "fail", "duration_s": 16, "status": 503}
    assert slow.control_body() == {"kind": "slowdown", "duration_s": 16, "factor": 3.0}
    _, long_slow = plan_incidents(200, "a", "b")
    assert long_slow.end_s - long_slow.start_s == 15.0
    with pytest.raises(ValueError):
        plan_incidents(60, "a", "a")


def _states(**by_provider: str) -> dict[tuple[str, str], str]:
    return {("m/x", p): st for p, st in by_provider.items()}


def test_detection_and_recovery_from_health_polls() -> None:
    samples = [
        (9.0, _states(a="degraded", b="healthy")),  # before the incident: ignored
        (10.0, _states(a="healthy", b="healthy")),
        (10.5, _states(a="healthy", b="healthy")),
        (12.5, _states(a="ejected", b="healthy")),
        (21.0, _states(a="probing", b="healthy")),
        (24.0, _states(a="healthy", b="healthy")),
    ]
    assert detected_after(samples, "a", start=10.0, end=20.0) == pytest.approx(2.5)
    assert detected_after(samples, "b", start=10.0, end=20.0) is None
    # Unhealthy only after the incident ended: not a detection.
    assert detected_after(samples, "a", start=10.0, end=12.0) is None
    assert recovered_after(samples, "a", end=20.0) == pytest.approx(4.0)
    assert recovered_after(samples[:-1], "a", end=20.0) is None


def test_routed_around_is_the_end_of_the_last_bad_second() -> None:
    # 10 requests a second from t=10 to t=20; the first attempt goes to "bad"
    # for one request in each of the first three seconds, then never.
    recs = [
        _rec(10 + s + i / 10, first="bad" if (i == 0 and s < 3) else "good")
        for s in range(10)
        for i in range(10)
    ]
    result = routed_around_after(
        recs, 10, 20, eligible=lambda r: True, matches=lambda r: r.first_provider == "bad"
    )
    assert result == pytest.approx(3.0)
    # Sent back to the bad provider in the last second: never routed around.
    recs.append(_rec(19.95, first="bad"))
    recs.append(_rec(19.96, first="bad"))
    assert (
        routed_around_after(
            recs, 10, 20, eligible=lambda r: True, matches=lambda r: r.first_provider == "bad"
        )
        is None
    )


def test_routed_around_needs_clean_traffic_afterwards() -> None:
    recs = [_rec(10.5, first="bad"), _rec(11.5, first="bad")]  # then silence
    assert (
        routed_around_after(
            recs, 10, 20, eligible=lambda r: True, matches=lambda r: r.first_provider == "bad"
        )
        is None
    )
    # No bad traffic at all, with clean traffic: routed around from the start.
    clean = [_rec(10 + s, first="good") for s in range(10)]
    assert (
        routed_around_after(
            clean, 10, 20, eligible=lambda r: True, matches=lambda r: r.first_provider == "bad"
        )
        == 0.0
    )


def test_fail_incident_ignores_pinned_requests_and_slowdown_looks_at_ttft_traffic() -> None:
    fail = IncidentPlan("fail", "bad", 10, 20)
    recs = [_rec(10 + s / 4, label="cost", first="bad" if s < 8 else "good") for s in range(40)]
    recs += [_rec(10 + s, label="pinned", first="bad", ok=False) for s in range(10)]
    assert routed_around_for(fail, recs) == pytest.approx(2.0)

    slow = IncidentPlan("slowdown", "slow", 10, 20)
    recs = [_rec(10 + s / 4, label="ttft", served="slow" if s < 12 else "fast") for s in range(40)]
    recs += [_rec(10 + s / 4, label="cost", served="slow") for s in range(40)]  # not TTFT-sorted
    assert routed_around_for(slow, recs) == pytest.approx(3.0)


def test_probes_are_not_counted_against_routing_around() -> None:
    plan = IncidentPlan("fail", "a", 10, 20)
    # Routed around after 1 s, then the router probes "a" at t=15 (the sidecar
    # reuses that ranking for a couple of requests).
    recs = [_rec(10 + s / 4, first="a" if s < 4 else "b") for s in range(40)]
    recs += [_rec(15.1, first="a"), _rec(16.0, first="a")]
    samples = [(10.0, _states(a="healthy")), (11.0, _states(a="ejected")),
               (15.0, _states(a="probing")), (15.25, _states(a="ejected"))]  # fmt: skip
    is_probe = probe_detector(samples, "a")
    assert is_probe(recs[-1]) and is_probe(recs[-2])
    assert not is_probe(_rec(18.0, first="a"))
    assert routed_around_for(plan, recs) == pytest.approx(7.0)  # probes counted: a relapse
    assert routed_around_for(plan, recs, is_probe) == pytest.approx(1.0)
    res = evaluate(plan, 10, 20, recs, samples)
    assert res.routed_around_after_s == pytest.approx(1.0)
    assert res.probe_first_attempts == 2


def test_evaluate_combines_the_measurements() -> None:
    plan = IncidentPlan("fail", "a", 10, 20)
    recs = [_rec(10 + s / 4, first="a" if s < 4 else "b") for s in range(40)]
    samples = [(10.0, _states(a="healthy")), (11.0, _states(a="ejected")),
               (23.0, _states(a="healthy"))]  # fmt: skip
    res = evaluate(plan, 10.2, 20.1, recs, samples)
    assert res.passed
    assert res.detected_after_s == pytest.approx(0.8)
    assert res.recovered_after_s == pytest.approx(2.9)
    out = res.to_json()
    assert out["detected"] and out["routed_around"] and out["recovered"]


# ---------------------------------------------------------------- end to end

#: The shortest duration the CLI accepts: every accepted duration must pass.
DEMO_SECONDS = int(MIN_DURATION_S)


def _summary_from(stdout: str) -> dict:
    for line in reversed(stdout.splitlines()):
        if line.startswith("{") and SUMMARY_KEY in line:
            return json.loads(line)[SUMMARY_KEY]
    raise AssertionError(f"no summary line in output:\n{stdout[-3000:]}")


@pytest.mark.timeout(DEMO_SECONDS + 90)
def test_router_demo_unattended_detects_and_routes_around_every_incident() -> None:
    env = {**os.environ, "COLUMNS": "120"}
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "router_demo.cli",
            "--duration",
            str(DEMO_SECONDS),
            "--no-live",
            "--json",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEMO_SECONDS + 80,
    )
    elapsed = time.monotonic() - started
    summary = _summary_from(proc.stdout)
    detail = f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-2000:]}"
    assert proc.returncode == 0, detail
    assert elapsed < DEMO_SECONDS + 40, detail
    assert summary["requests"] > 0 and summary["ok"] > 0.9 * summary["requests"], detail
    assert summary["all_incidents_handled"] is True, detail
    kinds = {inc["kind"] for inc in summary["incidents"]}
    assert kinds == {"fail", "slowdown"}, detail
    for inc in summary["incidents"]:
        assert inc["detected"] and inc["detected_after_s"] is not None, inc
        assert inc["routed_around"] and inc["routed_around_after_s"] is not None, inc
    # Every preference was exercised, and providers with different policies answered.
    assert set(summary["by_preference"]) >= {"cost", "ttft", "tps", "zdr", "order", "balance"}
    assert len(summary["served_by"]) >= 4
    assert not summary["errors"], summary["errors"]
    # Nothing left behind: no process, no listening port.
    assert len(summary["pids"]) >= 6
    assert [pid for pid in summary["pids"] if pid_alive(pid)] == []
    assert [port for port in summary["ports"] if port_open(port)] == []
    # Keys are never printed.
    assert "API_KEY=" not in proc.stdout + proc.stderr


def test_demo_on_a_port_in_use_exits_2_with_one_line_naming_port_and_flag() -> None:
    """Issue 12, item 4: no traceback; the port and the flag that sets it, on one line."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        base = port - 2  # the busy port is the third the demo wants
        proc = subprocess.run(
            [sys.executable, "-m", "router_demo.cli", "--duration", "60", "--no-live",
             "--base-port", str(base)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"port {port} " in lines[0] and "--base-port" in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


def test_durations_too_short_to_show_the_incidents_are_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert parse_args(["--duration", str(MIN_DURATION_S)]).duration == MIN_DURATION_S
    with pytest.raises(SystemExit) as exc:
        parse_args(["--duration", str(MIN_DURATION_S - 1)])
    assert exc.value.code == 2
    assert f"at least {MIN_DURATION_S:.0f}" in capsys.readouterr().err


def _printed_summary(as_json: bool) -> str:
    from rich.console import Console

    plan = IncidentPlan("slowdown", "cerebras", 10.0, 20.0)
    result = IncidentResult(plan, 10.0, 20.0, 2.5, 5.0, None)
    summary = build_summary(
        [], [result], duration_s=45.0, pids=[1], ports=[2], dashboard_url="http://x/"
    )
    console = Console(record=True, width=100, file=io.StringIO())
    with contextlib.redirect_stdout(io.StringIO()) as plain:
        print_summary(summary, console, as_json=as_json)
    return console.export_text() + plain.getvalue()


def test_summary_explains_its_words_and_ends_without_json_unless_asked() -> None:
    text = _printed_summary(as_json=False)
    for word in ("pinned", "detected", "routed around", "recovered"):
        assert re.search(rf"^{word}: ", text, re.M), word
    assert "not yet" in text
    last = text.strip().splitlines()[-1]
    assert not last.lstrip().startswith("{")
    assert SUMMARY_KEY not in text
    with_json = _printed_summary(as_json=True).strip().splitlines()[-1]
    assert json.loads(with_json)[SUMMARY_KEY]["incidents"][0]["detected_after_s"] == 2.5


def _interrupted_summary() -> dict:
    """An unattended run stopped 3 s into its first incident, before the second began."""
    plan = IncidentPlan("fail", "deepinfra", 9.0, 24.0)
    result = IncidentResult(plan, 9.0, 12.0, None, None, None, cut_short=True)
    return build_summary(
        [], [result], duration_s=12.0, pids=[1], ports=[2], dashboard_url="http://x/",
        interrupted=True, incidents_not_run=1,
    )  # fmt: skip


def test_an_interrupted_run_is_not_a_pass_and_its_cut_short_incident_is_not_a_failure() -> None:
    """Ctrl-C in the middle of an incident: the summary says the run was interrupted and
    the incident cut short, never "every incident was detected" (an unattended run used
    to exit 0 with that line) nor "NOT detected" (the incident had no time to be)."""
    from rich.console import Console

    summary = _interrupted_summary()
    assert summary["all_incidents_handled"] is False
    assert summary["interrupted"] is True and summary["incidents_not_run"] == 1
    assert summary["incidents"][0]["cut_short"] is True
    console = Console(record=True, width=120, file=io.StringIO())
    print_summary(summary, console)
    text = console.export_text()
    assert "interrupted after 12 s: 1 incident(s) cut short, 1 not run" in text
    assert "cut short" in text.split("Served by")[0]
    assert "NOT detected" not in text and "NOT routed around" not in text
    assert "every incident was detected" not in text
    assert "no incident ran to its end" in text


def test_a_complete_incident_in_an_interrupted_run_is_still_judged() -> None:
    from rich.console import Console

    done = IncidentResult(IncidentPlan("fail", "a", 9.0, 24.0), 9.0, 24.0, 2.0, 3.0, 5.0)
    missed = IncidentResult(IncidentPlan("slowdown", "b", 21.0, 36.0), 21.0, 36.0, None, None, None)
    for results, verdict in (
        ([done], "every incident that ran to its end was detected and routed around"),
        ([done, missed], "some incident was not detected or not routed around"),
    ):
        summary = build_summary(
            [], results, duration_s=40.0, pids=[], ports=[], dashboard_url="http://x/",
            interrupted=True,
        )  # fmt: skip
        assert summary["all_incidents_handled"] is False
        console = Console(record=True, width=120, file=io.StringIO())
        print_summary(summary, console)
        assert verdict in console.export_text()


@pytest.mark.timeout(DEMO_SECONDS + 90)
def test_sigint_during_an_unattended_run_exits_130_without_a_verdict_or_orphans() -> None:
    """SIGINT once the first incident is under way (read from the demo's own status
    lines, no sleep): exit 130, the summary says interrupted, nothing left running."""
    import selectors
    import signal

    proc = subprocess.Popen(
        [sys.executable, "-m", "router_demo.cli", "--duration", str(DEMO_SECONDS),
         "--no-live", "--json"],
        cwd=ROOT, env={**os.environ, "COLUMNS": "120"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + DEMO_SECONDS
        while time.monotonic() < deadline:
            if not sel.select(timeout=1.0):
                continue
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if "incidents=[" in line and "incidents=[none]" not in line:
                break
        assert seen and "incidents=[none]" not in seen[-1], "".join(seen)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    stdout = "".join(seen) + out
    detail = f"stdout:\n{stdout[-4000:]}\nstderr:\n{err[-2000:]}"
    assert proc.returncode == 128 + signal.SIGINT, detail
    summary = _summary_from(stdout)
    assert summary["interrupted"] is True and summary["all_incidents_handled"] is False, detail
    assert summary["incidents_not_run"] >= 1, detail
    assert "every incident was detected" not in stdout, detail
    assert "Traceback" not in stdout + err, detail
    assert [pid for pid in summary["pids"] if pid_alive(pid)] == []
    assert [port for port in summary["ports"] if port_open(port)] == []
