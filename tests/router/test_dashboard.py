"""The dashboard in a real headless Chromium (Debian's package) driven by Playwright.

Why a real browser: the pages are plain JS rendering the JSON API, so only a
browser shows whether the list loads, sorting reorders rows, the model page
shows every provider and "not enough data" instead of numbers, and whether
the page refreshes live. Every request the page makes is checked to stay on
the router (no CDN: the pages must work offline).

Skipped only when chromium is missing outside CI; in CI (``CI`` set) a missing
browser fails. Set ``DASHBOARD_SCREENSHOTS=/some/dir`` to keep screenshots.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from aiohttp import web

from router_common.pb import router_pb2
from tests.conftest import serving, wait_for
from tests.router.pb_builders import failure, outcome

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
GLM = "zai/glm-4.7"
CATALOG_ORDER = [GLM, "openai/gpt-oss-120b", "meta/llama-3.3-70b", "moonshotai/kimi-k2"]

if not Path(CHROMIUM).exists() and not os.environ.get("CI"):
    pytest.skip("chromium is not installed (scripts/setup --browser)", allow_module_level=True)

playwright_api = pytest.importorskip("playwright.async_api")
expect = playwright_api.expect


def seeded_outcomes() -> list[router_pb2.Outcome]:
    """Best P50s chosen so that TTFT order, throughput order and catalog order all differ."""

    def many(provider: str, model: str, ttft: float, tps: float, n: int = 8) -> list:
        return [
            outcome(provider, model=model, ttft_ms=ttft + i, tokens_per_second=tps)
            for i in range(n)
        ]

    return [
        *many("cerebras", GLM, 300.0, 1000.0),
        *many("together", GLM, 500.0, 80.0),
        *many("fireworks", GLM, 50.0, 3000.0, n=2),  # too few samples: "not enough data"
        *[failure("baseten") for _ in range(6)],  # ejected
        *many("groq", "openai/gpt-oss-120b", 100.0, 400.0),
        *many("deepinfra", "meta/llama-3.3-70b", 200.0, 50.0),
    ]


@pytest.fixture
async def page(router_app, router_stub) -> AsyncIterator:
    """A fresh Chromium page on a router holding the seeded outcomes; offline-checked."""
    ack = await router_stub.RecordOutcome(
        router_pb2.RecordOutcomeRequest(outcomes=seeded_outcomes())
    )
    assert ack.rejected == 0
    router_app.refresh_now()
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(viewport={"width": 1400, "height": 900})
            page = await context.new_page()
            page.set_default_timeout(10_000)
            router_host = urlsplit(router_app.http_url).netloc
            foreign: list[str] = []
            errors: list[str] = []
            page.on(
                "request", lambda r: urlsplit(r.url).netloc != router_host and foreign.append(r.url)
            )
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page
            assert not foreign, f"the dashboard fetched off-router resources: {foreign}"
            assert not errors, f"JavaScript errors: {errors}"
        finally:
            await browser.close()


async def row_order(page, selector: str, attribute: str) -> list[str]:
    return await page.locator(selector).evaluate_all(
        f"rows => rows.map(r => r.getAttribute('{attribute}'))"
    )


async def screenshot(page, name: str) -> None:
    folder = os.environ.get("DASHBOARD_SCREENSHOTS")
    if folder:
        await page.screenshot(path=str(Path(folder) / name), full_page=True)


async def test_model_list_loads_and_sorts(router_app, page) -> None:
    await page.goto(router_app.http_url + "/")
    rows = page.locator("#models tbody tr[data-model-id]")
    await expect(rows).to_have_count(4)
    await expect(page.locator("#status")).to_have_attribute("data-state", "live")
    assert await row_order(page, "#models tbody tr", "data-model-id") == CATALOG_ORDER
    glm = page.locator(f'tr[data-model-id="{GLM}"]')
    await expect(glm.locator('td[data-col="ttft"]')).to_contain_text("304 ms")
    await expect(glm.locator('td[data-col="ttft"]')).to_contain_text("via cerebras")
    await expect(glm.locator('td[data-col="throughput"]')).to_contain_text("1000 tok/s")
    kimi = page.locator('tr[data-model-id="moonshotai/kimi-k2"]')
    await expect(kimi.locator('td[data-col="ttft"]')).to_have_text("not enough data")
    await screenshot(page, "dashboard-list.png")

    ttft = page.locator('th[data-sort="ttft"]')
    await ttft.click()
    await expect(ttft).to_have_attribute("aria-sort", "ascending")
    assert await row_order(page, "#models tbody tr", "data-model-id") == [
        "openai/gpt-oss-120b",
        "meta/llama-3.3-70b",
        GLM,
        "moonshotai/kimi-k2",
    ]
    await ttft.click()  # descending; no data stays last
    assert await row_order(page, "#models tbody tr", "data-model-id") == [
        GLM,
        "meta/llama-3.3-70b",
        "openai/gpt-oss-120b",
        "moonshotai/kimi-k2",
    ]
    await page.locator('th[data-sort="throughput"]').click()
    assert await row_order(page, "#models tbody tr", "data-model-id") == [
        GLM,
        "openai/gpt-oss-120b",
        "meta/llama-3.3-70b",
        "moonshotai/kimi-k2",
    ]
    # The sort survives the live refresh (the poll re-renders the rows).
    refreshes = int(await page.locator("#status").get_attribute("data-refreshes"))
    await expect(page.locator("#status")).not_to_have_attribute("data-refreshes", str(refreshes))
    assert (await row_order(page, "#models tbody tr", "data-model-id"))[0] == GLM


async def test_model_page_shows_every_provider(router_app, page) -> None:
    await page.goto(router_app.http_url + "/")
    await page.locator(f'tr[data-model-id="{GLM}"] a').click()
    await page.wait_for_url(f"**/models/{GLM}")
    rows = page.locator("#providers tbody tr[data-provider]")
    await expect(rows).to_have_count(5)
    catalog = [e.provider.name for e in router_app.core.catalog.models[GLM].endpoints]
    assert sorted(await row_order(page, "#providers tbody tr", "data-provider")) == sorted(catalog)

    cerebras = page.locator('tr[data-provider="cerebras"]')
    await expect(cerebras.locator('td[data-col="ttft_p50"]')).to_have_text("304 ms")
    await expect(cerebras.locator('td[data-col="uptime_1h"]')).to_have_text("100%")
    await expect(cerebras.locator('td[data-col="samples"]')).to_have_text("8")
    fireworks = page.locator('tr[data-provider="fireworks"]')
    await expect(fireworks).to_have_attribute("data-enough-data", "false")
    await expect(fireworks.locator('td[data-col="ttft"]')).to_have_text("not enough data")
    baseten = page.locator('tr[data-provider="baseten"]')
    await expect(baseten).to_have_attribute("data-status", "ejected")
    await expect(baseten.locator('td[data-col="status"]')).to_contain_text("consecutive")
    await expect(page.locator("#events li[data-provider=baseten]")).to_have_count(1)
    # One line per provider with enough data (fireworks' 2 samples are not plotted either).
    await expect(page.locator("#chart-ttft path[data-stat=p50]")).to_have_count(2)
    await expect(page.locator("#chart-ttft path[data-stat=p95]")).to_have_count(2)
    await expect(page.locator("#chart-throughput path[data-stat=p50]")).to_have_count(2)
    await expect(page.locator("#chart-throughput path[data-stat=p95]")).to_have_count(0)
    await expect(page.locator("#chart-ttft path[data-provider=fireworks]")).to_have_count(0)
    # The 5-minute figures sit beside the hour's.
    await expect(cerebras.locator('td[data-col="ttft_5m_p50"]')).to_have_text("304 ms")
    # deepinfra was never called: "no data", not "healthy", in the table and the strip.
    deepinfra = page.locator('tr[data-provider="deepinfra"]')
    await expect(deepinfra).to_have_attribute("data-status", "no_data")
    await expect(deepinfra.locator('td[data-col="status"]')).to_contain_text("no data")
    strip = page.locator('#strip .strip-row[data-provider="deepinfra"] .cell')
    await expect(strip).to_have_count(90)  # 15 minutes of 10 s intervals
    assert set(await strip.evaluate_all("cs => cs.map(c => c.dataset.health)")) == {"no_data"}
    await expect(
        page.locator('#strip .strip-row[data-provider="baseten"] .cell').last
    ).to_have_attribute("data-health", "ejected")
    await expect(page.locator("#legend span[data-provider]")).to_have_count(5)
    await screenshot(page, "dashboard-model.png")

    await page.locator('th[data-sort="ttft"]').click()
    assert await row_order(page, "#providers tbody tr", "data-provider") == [
        "cerebras",
        "together",
        "fireworks",
        "deepinfra",
        "baseten",
    ]
    await page.locator('th[data-sort="status"]').click()
    assert (await row_order(page, "#providers tbody tr", "data-provider"))[-1] == "baseten"
    await page.locator('th[data-sort="price"]').click()
    assert (await row_order(page, "#providers tbody tr", "data-provider"))[0] == "deepinfra"


async def test_model_page_refreshes_live(router_app, router_stub, page) -> None:
    await page.goto(router_app.http_url + f"/models/{GLM}")
    deepinfra = page.locator('tr[data-provider="deepinfra"]')
    await expect(deepinfra).to_have_attribute("data-enough-data", "false")
    await router_stub.RecordOutcome(
        router_pb2.RecordOutcomeRequest(
            outcomes=[
                outcome("deepinfra", ttft_ms=120.0, tokens_per_second=250.0, started_at=time.time())
                for _ in range(6)
            ]
        )
    )
    # No reload: the page's own 2 s poll picks the new numbers up.
    await expect(deepinfra).to_have_attribute("data-enough-data", "true")
    await expect(deepinfra.locator('td[data-col="ttft_p50"]')).to_have_text("120 ms")
    await expect(
        page.locator("#chart-ttft path[data-provider=deepinfra][data-stat=p50]")
    ).to_have_count(1)


async def test_fresh_router_dashboard_shows_not_enough_data(router_app) -> None:
    """An empty store: every figure reads "not enough data", and nothing breaks."""
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(router_app.http_url + "/")
            await expect(page.locator("#models tbody tr")).to_have_count(4)
            await expect(page.locator("#models .nodata")).to_have_count(12)
            await page.goto(router_app.http_url + f"/models/{GLM}")
            await expect(page.locator("#providers tbody tr")).to_have_count(5)
            await expect(page.locator("#providers td[data-col=ttft]")).to_have_count(5)
            await expect(page.locator("#chart-ttft [data-empty]")).to_have_text("not enough data")
            # No axes without data (no "1, 1, 1, 0, 0" ticks), and nobody is called healthy.
            await expect(page.locator("#chart-ttft text:not([data-empty])")).to_have_count(0)
            await expect(page.locator("#providers tr[data-status=no_data]")).to_have_count(5)
            await expect(page.locator("#strip .cell[data-health=no_data]")).to_have_count(5 * 90)
            assert not errors
        finally:
            await browser.close()


async def test_an_incident_shows_on_the_chart_and_the_strip_within_seconds(
    router_app, router_stub
) -> None:
    """A provider's TTFT rises 4x, then it fails: the open page shows both, unreloaded."""
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1100})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            # Before: 10 normal answers 30 s ago (an earlier 10 s interval).
            before = time.time() - 30
            await router_stub.RecordOutcome(
                router_pb2.RecordOutcomeRequest(
                    outcomes=[
                        outcome("cerebras", ttft_ms=100.0 + i, started_at=before) for i in range(10)
                    ]
                )
            )
            router_app.refresh_now()  # the hour's P50 (the health baseline) is now ~100 ms
            await page.goto(router_app.http_url + f"/models/{GLM}?refresh=300&range=5m")
            p50 = page.locator("#chart-ttft path[data-provider=cerebras][data-stat=p50]")
            await expect(p50).to_have_count(1)
            assert float(await p50.get_attribute("data-last")) < 150
            cells = page.locator('#strip .strip-row[data-provider="cerebras"] .cell')
            await expect(cells).to_have_count(30)
            await expect(cells.last).to_have_attribute("data-health", "no_data")
            await screenshot(page, "dashboard-incident-before.png")

            # The slowdown: TTFT x4 now.
            await router_stub.RecordOutcome(
                router_pb2.RecordOutcomeRequest(
                    outcomes=[outcome("cerebras", ttft_ms=400.0 + i) for i in range(10)]
                )
            )
            await expect(p50).to_have_attribute("data-last", re.compile(r"^(3[5-9]\d|4\d\d)"))
            await expect(cells.last).to_have_attribute("data-health", "degraded", timeout=5000)
            row = page.locator('tr[data-provider="cerebras"]')
            await expect(row).to_have_attribute("data-status", "degraded", timeout=5000)
            await expect(row.locator('td[data-col="status"]')).to_contain_text("baseline")
            await screenshot(page, "dashboard-incident-slow.png")

            # Then it fails outright: ejected, on the strip too.
            await router_stub.RecordOutcome(
                router_pb2.RecordOutcomeRequest(outcomes=[failure("cerebras") for _ in range(6)])
            )
            await expect(cells.last).to_have_attribute("data-health", "ejected", timeout=5000)
            await expect(row).to_have_attribute("data-status", "ejected", timeout=5000)
            await expect(
                page.locator("#strip .strip-row[data-provider=cerebras] .strip-uptime")
            ).not_to_have_text("100%")
            await screenshot(page, "dashboard-incident-ejected.png")

            # The hour view: per-minute points, same incident.
            await page.locator('#range button[data-range="1h"]').click()
            await expect(cells).to_have_count(60)
            await expect(cells.last).to_have_attribute("data-health", "ejected")
            assert "range=1h" in page.url
            assert not errors, errors
        finally:
            await browser.close()


async def test_model_list_filters_and_shows_price_and_p95(router_app, page) -> None:
    await page.goto(router_app.http_url + "/")
    rows = page.locator("#models tbody tr[data-model-id]")
    await expect(rows).to_have_count(4)
    glm = page.locator(f'tr[data-model-id="{GLM}"]')
    await expect(glm.locator('td[data-col="price"]')).to_contain_text("$0.45 / $1.90")
    await expect(glm.locator('td[data-col="price"]')).to_contain_text("via deepinfra")
    await expect(glm.locator('td[data-col="ttft_p95"]')).to_contain_text("via cerebras")
    await page.locator("#filter").fill("groq")  # a provider name matches too
    await expect(rows).to_have_count(3)
    await expect(page.locator("#shown")).to_have_text("3 of 4 models")
    await page.locator("#filter").fill("glm")
    await expect(rows).to_have_count(1)
    assert "q=glm" in page.url
    await page.locator("#filter").fill("no-such-thing")
    await expect(rows).to_have_count(0)
    await expect(page.locator("#models [data-empty]")).to_contain_text("no-such-thing")
    await screenshot(page, "dashboard-list-filtered.png")


async def test_unknown_model_page_offers_a_way_back(router_app, page) -> None:
    response = await page.goto(router_app.http_url + "/models/zai/glm-9")
    assert response is not None and response.status == 404
    await expect(page.locator("h1")).to_have_text("Unknown model")
    await expect(page.locator("#message")).to_contain_text("zai/glm-9")
    await expect(page.locator("#suggestions a")).to_have_count(1)
    await expect(page.locator(f'#suggestions a[data-model-id="{GLM}"]')).to_have_count(1)
    await expect(page.locator("#all-models a")).to_have_count(4)
    await screenshot(page, "dashboard-unknown.png")
    await page.locator("#back").click()
    await page.wait_for_url(router_app.http_url + "/")


async def test_a_huge_refresh_parameter_does_not_turn_into_a_busy_loop(router_app, page) -> None:
    # setTimeout takes its delay as a 32-bit int: ?refresh=Infinity (or 2**32) became
    # 0 ms, so the page polled the router back to back instead of every 2 s.
    for asked in ("Infinity", str(2**32), "1e300"):
        await page.goto(router_app.http_url + f"/?refresh={asked}")
        await expect(page.locator("#status")).to_have_attribute("data-state", "live")
        period = await page.evaluate("Dash.REFRESH_MS")
        assert 200 <= period <= 2**31 - 1, (asked, period)


async def test_a_range_named_like_an_object_property_falls_back_to_15m(router_app, page) -> None:
    # RANGE_NOTE["constructor"] is Object's constructor (truthy), so ?range=constructor
    # was kept and every timeseries fetch was a 400: "cannot reach the router".
    await page.goto(router_app.http_url + f"/models/{GLM}?range=constructor&refresh=200")
    status = page.locator("#status")
    await expect(status).to_have_attribute("data-state", "live")
    await expect(status).not_to_have_attribute("data-refreshes", "1")  # polled again, still live
    await expect(status).to_have_attribute("data-state", "live")
    await expect(page.locator('#range button[data-range="15m"]')).to_have_attribute(
        "aria-pressed", "true"
    )


async def test_a_sort_named_like_an_object_property_is_ignored(router_app, page) -> None:
    # columns["constructor"] is truthy too: #sort=constructor:asc was taken as a column,
    # and every render threw ("value is not a function"), so the list never showed.
    await page.goto(router_app.http_url + "/#sort=constructor:asc")
    await expect(page.locator("#status")).to_have_attribute("data-state", "live")


async def test_pages_log_no_console_errors(router_app, page) -> None:
    """A newcomer opening the devtools sees no red: the browser asks for an icon and got
    a 404 (logged as "Failed to load resource") on every first visit before the pages
    named one."""
    console_errors: list[str] = []
    page.on(
        "console",
        lambda m: m.type == "error" and console_errors.append(f"{m.text} {m.location.get('url')}"),
    )
    for path in ("/", f"/models/{GLM}"):
        # refresh=10 min: no polling, so the network goes idle once the page is done.
        await page.goto(router_app.http_url + path + "?refresh=600000")
        await expect(page.locator("#status")).to_have_attribute("data-state", "live")
        await page.wait_for_load_state("networkidle")
    assert console_errors == []


async def test_dashboard_behind_tokens_opens_with_the_read_token_as_basic_password(
    tmp_path: Path,
) -> None:
    """k8s/ runs the router with --auth-tokens, and the README says a browser's own login
    prompt opens the dashboard (any user, the read token as password). The pages' own
    fetches of the JSON API must carry that login too, or the page loads and every
    figure fails; a token without `read` gets a page that says why, not a blank one."""
    import grpc

    from router_common.pb import router_pb2_grpc
    from router_service.security import SecuritySettings
    from tests.conftest import loopback_router

    (tmp_path / "dash-token").write_text("dash-token-1\n")
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        "callers:\n"
        '  app-sidecars: {token: "sidecar-secret-1", scopes: [rank, report]}\n'
        "  dashboards: {token_file: dash-token, scopes: [read]}\n"
    )
    app = loopback_router(
        tmp_path, drain_seconds=0.2, security=SecuritySettings(auth_tokens=str(tokens))
    )
    await app.start()
    try:
        async with grpc.aio.insecure_channel(app.grpc_address) as channel:
            ack = await router_pb2_grpc.RouterStub(channel).RecordOutcome(
                router_pb2.RecordOutcomeRequest(outcomes=seeded_outcomes()),
                metadata=(("authorization", "Bearer sidecar-secret-1"),),
            )
        assert ack.accepted > 0 and ack.rejected == 0
        app.refresh_now()
        async with playwright_api.async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                for password, ok in (("dash-token-1", True), ("sidecar-secret-1", False)):
                    context = await browser.new_context(
                        http_credentials={"username": "anyone", "password": password}
                    )
                    page = await context.new_page()
                    errors: list[str] = []
                    page.on("pageerror", lambda exc, errors=errors: errors.append(str(exc)))
                    resp = await page.goto(app.http_url + f"/models/{GLM}")
                    assert resp is not None
                    if ok:
                        assert resp.status == 200
                        status = page.locator("#status")
                        await expect(status).to_have_attribute("data-state", "live")
                        cerebras = page.locator('tr[data-provider="cerebras"]')
                        ttft = cerebras.locator('td[data-col="ttft_p50"]')
                        await expect(ttft).to_have_text("304 ms")
                        strip = page.locator("#strip .cell[data-health=healthy]")
                        await expect(strip.first).to_be_attached()
                        chart = page.locator("#chart-ttft path[data-stat=p50]")
                        await expect(chart).to_have_count(2)
                    else:  # the JSON refusal names the missing scope
                        assert resp.status == 403
                        assert "read" in await page.inner_text("body")
                    assert not errors
                    await context.close()
            finally:
                await browser.close()
    finally:
        await app.stop()


#: Markup that sets window.__pwned if any page ever parses it as HTML (or runs it).
HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=1</script>\'"'


async def test_markup_in_the_url_is_shown_as_text_never_run(router_app, page) -> None:
    # Every page echoes parts of its URL (the asked model id, ?q=, ?range=, #sort=):
    # they must reach the DOM as text. Checked in the browser, where it matters.
    enc = quote(HOSTILE, safe="")
    visits = [
        (f"/models/{enc}/{enc}", "#message", HOSTILE),  # the unknown-model page
        (f"/?q={enc}#sort={enc}", None, None),
        (f"/models/{GLM}?range={enc}#sort={enc}", None, None),
    ]
    for path, where, shown in visits:
        await page.goto(router_app.http_url + path)
        await expect(page.locator("#status")).to_have_attribute("data-state", "live")
        if where:
            await expect(page.locator(where)).to_contain_text(shown)
        assert await page.locator("main img, main script").count() == 0, path
        assert await page.evaluate("window.__pwned") is None, path


async def test_another_site_cannot_frame_the_dashboard(router_app, page) -> None:
    # Framed by another origin (here another loopback port), the dashboard must not load:
    # a page could overlay it and make a user with remembered credentials click on it.
    async def framer(_: web.Request) -> web.Response:
        html = f'<iframe id="f" src="{router_app.http_url}/"></iframe>'
        return web.Response(text=html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", framer)
    # A page of its own: the fixture's page fails any request off the router.
    page = await page.context.new_page()
    async with serving(app) as port:
        loaded: list[str] = []
        page.on(
            "response", lambda r: r.url.rstrip("/") == router_app.http_url and loaded.append(r.url)
        )
        await page.goto(f"http://127.0.0.1:{port}/")
        await wait_for(lambda: loaded)  # the browser fetched the framed page ...
        child = page.frames[1]
        await child.wait_for_load_state()
        # ... and refused to render it: no dashboard script ran in the frame.
        assert await page.frame_locator("#f").locator("#status").count() == 0
        assert "chrome-error" in child.url or child.url == "about:blank", child.url


async def test_a_chart_whose_values_are_all_zero_draws_a_line_not_nan(
    router_app, router_stub, page
) -> None:
    """Found by the observability audit: when every point of the TTFT chart was 0 ms (a
    valid outcome: a cached answer, a clock's resolution), the axis maximum was
    10 ** floor(log10(0)) = 0, so every y coordinate was 0/0: Chromium logged
    'attribute y1: Expected length, "NaN"' for each grid line and drew no line."""
    kimi = "moonshotai/kimi-k2"
    zeros = [outcome("groq", model=kimi, ttft_ms=0.0, started_at=time.time()) for _ in range(6)]
    ack = await router_stub.RecordOutcome(router_pb2.RecordOutcomeRequest(outcomes=zeros))
    assert ack.rejected == 0
    router_app.refresh_now()
    console_errors: list[str] = []
    page.on("console", lambda m: m.type == "error" and console_errors.append(m.text))
    await page.goto(router_app.http_url + f"/models/{kimi}?refresh=600000")
    line = page.locator("#chart-ttft path[data-provider=groq][data-stat=p50]")
    await expect(line).to_have_attribute("data-last", "0")
    assert "NaN" not in (await line.get_attribute("d") or "NaN")
    assert "NaN" not in await page.locator("#chart-ttft").inner_html()
    await page.wait_for_load_state("networkidle")
    assert console_errors == []


async def test_a_router_that_stops_answering_is_not_shown_as_live(router_app) -> None:
    """Found by the observability audit: the pages' fetches had no deadline, so when the
    router hung (connection open, no answer: a stopped process, a stuck loop) the open
    dashboard kept saying "live · updated <time>" forever over stale figures, while a
    refused connection did say "cannot reach the router". Here a real loopback proxy in
    front of the router stops answering the JSON API once the page is live."""
    import aiohttp

    hung = asyncio.Event()
    release = asyncio.Event()  # set at the end, so the held requests finish for cleanup

    async def forward(request: web.Request) -> web.Response:
        if hung.is_set() and request.path.startswith("/v1/"):
            await release.wait()
        async with (
            aiohttp.ClientSession() as session,
            session.get(router_app.http_url + request.path_qs) as upstream,
        ):
            body = await upstream.read()
            headers = {"Content-Type": upstream.headers["Content-Type"]}
            return web.Response(body=body, status=upstream.status, headers=headers)

    proxy = web.Application()
    proxy.router.add_get("/{tail:.*}", forward)
    async with serving(proxy) as port, playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(f"http://127.0.0.1:{port}/?refresh=200")
            status = page.locator("#status")
            await expect(status).to_have_attribute("data-state", "live")
            hung.set()
            await expect(status).to_have_attribute("data-state", "error", timeout=10_000)
            await expect(status).to_contain_text("no answer within")
            hung.clear()  # answering again: the page says so by itself
            await expect(status).to_have_attribute("data-state", "live", timeout=10_000)
        finally:
            release.set()
            await browser.close()


async def test_an_uptime_with_a_failure_never_reads_100_percent(
    router_app, router_stub, page
) -> None:
    """Found by the observability audit: percentages were printed with one decimal, so one
    failure in 2,000 attempts (99.95 %) read "100.0%" in the table and the health strip,
    next to a clean endpoint's "100%". Decimals are added until it reads below 100."""
    kimi = "moonshotai/kimi-k2"
    for first in range(0, 2000, 1000):
        batch = [outcome("groq", model=kimi) for _ in range(1000)]
        if first == 0:
            batch[0] = failure("groq", model=kimi)
        ack = await router_stub.RecordOutcome(router_pb2.RecordOutcomeRequest(outcomes=batch))
        assert ack.accepted == 1000
    router_app.refresh_now()
    await page.goto(router_app.http_url + f"/models/{kimi}?refresh=600000")
    groq = page.locator('tr[data-provider="groq"]')
    await expect(groq.locator('td[data-col="uptime_1h"]')).to_have_text("99.95%")
    await expect(page.locator('.strip-row[data-provider="groq"] .strip-uptime')).to_have_text(
        "99.95%"
    )
