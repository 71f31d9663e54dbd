// Model page: per-provider breakdown (5 min and 1 h side by side, sortable), a health strip
// and P50/P95 charts over a chosen range (5 min / 15 min in 10 s steps, 1 h per minute),
// health events; live.
"use strict";

(() => {
  const { el, noData, fmtMs, fmtTps, fmtPct, fmtTime, getJSON, badge } = Dash;
  const modelId = location.pathname.replace(/^\/models\//, "").split("/")
    .map(decodeURIComponent).join("/");
  const api = Dash.apiModelPath(modelId);
  document.title = `${modelId} · LLM provider router`;
  document.getElementById("model-id").textContent = modelId;
  document.getElementById("crumb-model").textContent = modelId;
  document.getElementById("api-link").href = `${api}/endpoints`;

  // A fixed palette, assigned by catalog position so colours are stable across refreshes.
  const PALETTE = ["#2563eb", "#e8590c", "#0d9488", "#c026d3", "#ca8a04", "#dc2626",
                   "#4f46e5", "#16a34a", "#db2777", "#0891b2"];
  const HEALTH_RANK = { healthy: 0, no_data: 1, degraded: 2, probing: 3, ejected: 4 };
  const RANGE_NOTE = { "5m": "last 5 minutes, 10-second intervals",
                       "15m": "last 15 minutes, 10-second intervals",
                       "1h": "last hour, one-minute intervals" };
  const p = (obj, k) => (obj ? obj[k] : null);
  const shownStatus = (e) => (e.observed ? e.status : "no_data");
  const columns = {
    provider: { value: (e) => e.provider_name, dir: 1 },
    status: { value: (e) => HEALTH_RANK[shownStatus(e)] ?? 9, dir: 1 },
    zdr: { value: (e) => (e.zero_data_retention ? 0 : 1), dir: 1 },
    price: { value: (e) => e.pricing.input_per_million + e.pricing.output_per_million, dir: 1 },
    ttft_5m: { value: (e) => p(e.latency_last_5m, "p50"), dir: 1 },
    ttft_p95_5m: { value: (e) => p(e.latency_last_5m, "p95"), dir: 1 },
    ttft: { value: (e) => p(e.latency_last_1h, "p50"), dir: 1 },
    ttft_p95: { value: (e) => p(e.latency_last_1h, "p95"), dir: 1 },
    throughput_5m: { value: (e) => p(e.throughput_last_5m, "p50"), dir: -1 },
    throughput: { value: (e) => p(e.throughput_last_1h, "p50"), dir: -1 },
    uptime_15m: { value: (e) => e.uptime_last_15m, dir: -1 },
    uptime_1h: { value: (e) => e.uptime_last_1h, dir: -1 },
    uptime_1d: { value: (e) => e.uptime_last_1d, dir: -1 },
    samples: { value: (e) => e.sample_size_last_1h, dir: -1 },
  };
  const table = document.getElementById("providers");
  const tbody = table.querySelector("tbody");
  let endpoints = [];
  let colours = {};
  let minSamples = 5;
  let series = [];
  const sort = Dash.sorter(table, columns, renderTable, Dash.sortFromHash(columns));

  // ---- time range ------------------------------------------------------------------------
  let range = Dash.queryParam("range");
  if (!Object.hasOwn(RANGE_NOTE, range)) range = "15m";  // not ?range=constructor
  const rangeButtons = [...document.querySelectorAll("#range button")];
  function paintRange() {
    rangeButtons.forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.range === range)));
    document.getElementById("range-note").textContent = `(${RANGE_NOTE[range]})`;
    document.getElementById("series-link").href = `${api}/timeseries?range=${range}`;
  }
  rangeButtons.forEach((b) => b.addEventListener("click", async () => {
    range = Dash.queryParam("range", b.dataset.range);
    paintRange();
    await loadSeries().catch(() => {});  // the next poll reports errors
  }));
  paintRange();

  // ---- provider table --------------------------------------------------------------------
  function pair(col, metric, fmt, samples, window) {
    if (!metric) {
      return [el("td", { class: "nodata-cell", colspan: "2", "data-col": col },
        noData(`${samples} sample(s) in the ${window}; at least ${minSamples} needed`))];
    }
    return [el("td", { class: "num", "data-col": `${col}_p50`, "data-value": metric.p50 }, fmt(metric.p50)),
            el("td", { class: "num", "data-col": `${col}_p95`, "data-value": metric.p95 }, fmt(metric.p95))];
  }
  /** Throughput P50 alone (the P95 of throughput is its good tail, and it is on the chart). */
  function single(col, metric, fmt, samples, window) {
    if (!metric) {
      return el("td", { class: "nodata-cell", "data-col": col },
        noData(`${samples} sample(s) in the ${window}; at least ${minSamples} needed`));
    }
    return el("td", { class: "num", "data-col": `${col}_p50`, "data-value": metric.p50,
                      title: `P95 ${fmt(metric.p95)}` }, fmt(metric.p50));
  }
  function uptimeCell(col, ratio, attempts) {
    if (ratio === null) {
      return el("td", { class: "num", "data-col": col, "data-value": "" },
        el("span", { class: "nodata", title: `${attempts} attempt(s); at least ${minSamples} needed` }, "—"));
    }
    return el("td", { class: "num", "data-col": col, "data-value": ratio, title: `${attempts} attempts` },
      fmtPct(ratio));
  }

  function row(e) {
    const status = shownStatus(e);
    const reason = e.status_reason
      || (status === "no_data" ? "not called in the last hour" : "");
    const until = e.ejected_until ? ` (until ${fmtTime(e.ejected_until)})` : "";
    return el("tr", { "data-provider": e.provider_name, "data-status": status,
                      "data-enough-data": String(e.enough_data) },
      el("td", { "data-col": "provider" },
        el("i", { class: "swatch", style: `background:${colours[e.provider_name]}` }),
        el("b", {}, e.provider_name),
        el("span", { class: "via" }, e.upstream_model)),
      el("td", { "data-col": "status" }, badge(status),
        reason || until ? el("span", { class: "reason" }, reason + until) : null),
      el("td", { "data-col": "zdr" }, e.zero_data_retention ? "yes" : "no"),
      el("td", { class: "num", "data-col": "price" },
        `$${e.pricing.input_per_million.toFixed(2)} / $${e.pricing.output_per_million.toFixed(2)}`),
      ...pair("ttft_5m", e.latency_last_5m, fmtMs, e.sample_size_last_5m, "last 5 minutes"),
      ...pair("ttft", e.latency_last_1h, fmtMs, e.sample_size_last_1h, "last hour"),
      single("throughput_5m", e.throughput_last_5m, fmtTps, e.sample_size_last_5m,
        "last 5 minutes"),
      single("throughput", e.throughput_last_1h, fmtTps, e.throughput_sample_size_last_1h,
        "last hour"),
      uptimeCell("uptime_15m", e.uptime_last_15m, e.attempts.last_15m),
      uptimeCell("uptime_1h", e.uptime_last_1h, e.attempts.last_1h),
      uptimeCell("uptime_1d", e.uptime_last_1d, e.attempts.last_1d),
      el("td", { class: "num", "data-col": "samples", "data-value": e.sample_size_last_1h },
        String(e.sample_size_last_1h)));
  }

  function renderTable() {
    tbody.replaceChildren(...sort.apply(endpoints).map(row));
  }

  // ---- health strip ----------------------------------------------------------------------
  function renderStrip() {
    const strip = document.getElementById("strip");
    strip.replaceChildren(...series.map((sr) => {
      const attempts = sr.points.reduce((a, pt) => a + pt.attempts, 0);
      const ok = sr.points.reduce((a, pt) => a + pt.successes, 0);
      const uptime = attempts >= minSamples ? fmtPct(ok / attempts) : null;
      const cells = sr.points.map((pt) => {
        const label = Dash.STATE_LABEL[pt.health] || pt.health;
        const detail = pt.attempts
          ? ` · ${pt.attempts} attempts, ${pt.failures} failed`
          : " · no attempts";
        return el("span", { class: `cell ${pt.health}`, "data-health": pt.health,
                            "data-start": String(pt.start),
                            title: `${fmtTime(pt.start)}–${fmtTime(pt.end)}: ${label}${detail}` });
      });
      return el("div", { class: "strip-row", "data-provider": sr.provider_name },
        el("span", { class: "strip-name" },
          el("i", { class: "swatch", style: `background:${colours[sr.provider_name]}` }),
          sr.provider_name),
        el("div", { class: "cells" }, cells),
        el("span", { class: "strip-uptime", "data-uptime": uptime === null ? "" : String(ok / attempts),
                     title: `${attempts} attempts in the range` },
          uptime === null ? el("span", { class: "nodata" }, attempts ? "too few" : "no data") : uptime));
    }));
    if (series.length) {
      const pts = series[0].points;
      strip.append(el("div", { class: "strip-axis" }, el("span", {}, fmtTime(pts[0].start).slice(0, 5)),
        el("span", {}, "now")));
    }
  }

  // ---- SVG line charts -------------------------------------------------------------------
  const SVG = "http://www.w3.org/2000/svg";
  function s(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function niceMax(v) {
    // Every value 0 (0 ms TTFT, 0 tok/s are valid outcomes): log10(0) is -Infinity and an
    // axis of 0..0 made every y coordinate 0/0 (NaN in the SVG, no line drawn). 0..1 instead.
    if (!(v > 0 && Number.isFinite(v))) return 1;
    const mag = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * mag >= v) return m * mag;
    return 10 * mag;
  }
  // Tick labels with as many decimals as the step needs (never "1, 1, 1, 0, 0").
  function tickFormat(step) {
    const decimals = step >= 1 ? 0 : Math.min(3, Math.ceil(-Math.log10(step)));
    return (v) => v.toFixed(decimals);
  }
  const TICK_EVERY = { "5m": 60, "15m": 180, "1h": 600 };

  /** One metric: per provider a solid P50 line and a dashed P95 line, broken where a bucket
   *  has too few samples; with no data at all, no axes, just the message. */
  function drawChart(svg, field, fmtValue, stats) {
    const W = svg.clientWidth || 560, H = svg.clientHeight || 220;
    const L = 52, R = 12, T = 10, B = 24;
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.replaceChildren();
    const values = series.flatMap((sr) => sr.points.flatMap((pt) => stats.map((st) => pt[`${field}_${st}`])))
      .filter((v) => v !== null);
    if (!series.length || !values.length) {
      svg.append(s("text", { class: "empty", x: W / 2, y: H / 2, "text-anchor": "middle",
                             "data-empty": "true" }, "not enough data"));
      return;
    }
    const pts0 = series[0].points;
    const t0 = pts0[0].start, t1 = pts0[pts0.length - 1].end;
    const ymax = niceMax(Math.max(...values) * 1.1);
    const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
    const y = (v) => T + (1 - v / ymax) * (H - T - B);
    const fmtTick = tickFormat(ymax / 4);
    for (let i = 0; i <= 4; i++) {
      const v = (ymax * i) / 4;
      svg.append(s("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      svg.append(s("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, fmtTick(v)));
    }
    const every = TICK_EVERY[range] || 300;
    for (let t = Math.ceil(t0 / every) * every; t <= t1; t += every) {
      if (x(t) < L + 14 || x(t) > W - R - 14) continue;  // a label cut by the edge helps nobody
      svg.append(s("text", { x: x(t), y: H - 6, "text-anchor": "middle" }, fmtTime(t).slice(0, 5)));
    }
    for (const sr of series) {
      const colour = colours[sr.provider_name];
      const g = s("g", { "data-provider": sr.provider_name });
      for (const stat of stats) {
        let d = "", pen = false, last = null;
        for (const pt of sr.points) {
          const v = pt[`${field}_${stat}`];
          if (v === null) { pen = false; continue; }
          const px = x((pt.start + pt.end) / 2), py = y(v);
          d += `${pen ? "L" : "M"}${px.toFixed(1)},${py.toFixed(1)} `;
          pen = true;
          last = v;
          if (stat === "p95") {  // hollow: an isolated P95 point is visible without a line
            g.append(s("circle", { cx: px, cy: py, r: 2, fill: "none", stroke: colour,
                                   "stroke-width": 1, "data-stat": "p95" }));
          } else {
            const dot = s("circle", { cx: px, cy: py, r: 2.5, fill: colour });
            dot.append(s("title", {}, `${sr.provider_name} · ${fmtTime(pt.start)}: P50 ${fmtValue(v)}`
              + (stats.includes("p95") && pt[`${field}_p95`] !== null
                ? `, P95 ${fmtValue(pt[`${field}_p95`])}` : "")));
            g.append(dot);
          }
        }
        if (!d) continue;
        const path = s("path", { d, fill: "none", stroke: colour, "stroke-linejoin": "round",
                                 "stroke-width": stat === "p50" ? 2 : 1.5,
                                 "data-provider": sr.provider_name, "data-stat": stat,
                                 "data-last": String(last) });
        if (stat === "p95") path.setAttribute("stroke-dasharray", "5 4");
        g.prepend(path);
      }
      svg.append(g);
    }
  }

  function renderCharts() {
    drawChart(document.getElementById("chart-ttft"), "ttft", fmtMs, ["p95", "p50"]);
    // Throughput's P95 is its fast tail (short answers read as huge rates) and would
    // flatten every P50 line against the axis: P50 only.
    drawChart(document.getElementById("chart-throughput"), "throughput", fmtTps, ["p50"]);
    document.getElementById("legend").replaceChildren(...series.map((sr) =>
      el("span", { "data-provider": sr.provider_name },
        el("i", { style: `background:${colours[sr.provider_name]}` }), sr.provider_name)));
  }

  function renderEvents(events) {
    const list = document.getElementById("events");
    if (!events.length) {
      list.replaceChildren(el("li", { class: "nodata" }, "no health state changes yet"));
      return;
    }
    list.replaceChildren(...events.slice().reverse().map((ev) =>
      el("li", { "data-provider": ev.provider_name },
        el("time", {}, fmtTime(ev.at)), el("b", {}, ev.provider_name), " ",
        badge(ev.from), " → ", badge(ev.to), " ", el("span", { class: "nodata" }, ev.reason))));
  }

  async function loadSeries() {
    const asked = range;
    const ts = await getJSON(`${api}/timeseries?range=${asked}`);
    if (asked !== range) return;  // the range changed while this was in flight
    series = ts.data.series;
    renderStrip();
    renderCharts();
  }

  Dash.poll(async () => {
    const doc = await getJSON(`${api}/endpoints`);
    endpoints = doc.data.endpoints;
    minSamples = doc.data.min_samples;
    document.getElementById("min-samples").textContent = minSamples;
    colours = Object.fromEntries(endpoints.map((e, i) => [e.provider_name, PALETTE[i % PALETTE.length]]));
    renderTable();
    renderEvents(doc.data.health_events);
    await loadSeries();
  });
})();
