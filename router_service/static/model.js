// Model page: per-provider breakdown (sortable), last-hour SVG charts, health events; live.
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
  document.getElementById("series-link").href = `${api}/timeseries`;

  // A fixed palette, assigned by catalog position so colours are stable across refreshes.
  const PALETTE = ["#2563eb", "#e8590c", "#0d9488", "#c026d3", "#ca8a04", "#dc2626",
                   "#4f46e5", "#16a34a", "#db2777", "#0891b2"];
  const HEALTH_RANK = { healthy: 0, degraded: 1, probing: 2, ejected: 3 };
  const p = (obj, k) => (obj ? obj[k] : null);
  const columns = {
    provider: { value: (e) => e.provider_name, dir: 1 },
    status: { value: (e) => HEALTH_RANK[e.status] ?? 9, dir: 1 },
    zdr: { value: (e) => (e.zero_data_retention ? 0 : 1), dir: 1 },
    price: { value: (e) => e.pricing.input_per_million + e.pricing.output_per_million, dir: 1 },
    ttft: { value: (e) => p(e.latency_last_1h, "p50"), dir: 1 },
    ttft_p95: { value: (e) => p(e.latency_last_1h, "p95"), dir: 1 },
    throughput: { value: (e) => p(e.throughput_last_1h, "p50"), dir: -1 },
    throughput_p95: { value: (e) => p(e.throughput_last_1h, "p95"), dir: -1 },
    uptime_15m: { value: (e) => e.uptime_last_15m, dir: -1 },
    uptime_1h: { value: (e) => e.uptime_last_1h, dir: -1 },
    uptime_1d: { value: (e) => e.uptime_last_1d, dir: -1 },
    samples: { value: (e) => e.sample_size_last_1h, dir: -1 },
  };
  const table = document.getElementById("providers");
  const tbody = table.querySelector("tbody");
  let endpoints = [];
  let colours = {};
  const sort = Dash.sorter(table, columns, renderTable, Dash.sortFromHash(columns));

  function pair(col, metric, fmt, samples) {
    if (!metric) {
      return [el("td", { class: "nodata-cell", colspan: "2", "data-col": col },
        noData(`${samples} sample(s) in the last hour; at least ${minSamples} needed`))];
    }
    return [el("td", { class: "num", "data-col": `${col}_p50`, "data-value": metric.p50 }, fmt(metric.p50)),
            el("td", { class: "num", "data-col": `${col}_p95`, "data-value": metric.p95 }, fmt(metric.p95))];
  }
  function uptimeCell(col, ratio, attempts) {
    if (ratio === null) {
      return el("td", { class: "num", "data-col": col, "data-value": "" },
        el("span", { class: "nodata", title: `${attempts} attempt(s); at least ${minSamples} needed` }, "—"));
    }
    return el("td", { class: "num", "data-col": col, "data-value": ratio, title: `${attempts} attempts` },
      fmtPct(ratio));
  }
  let minSamples = 5;

  function row(e) {
    const reason = e.status_reason || (e.status === "healthy" ? "" : e.status);
    const until = e.ejected_until ? ` (until ${fmtTime(e.ejected_until)})` : "";
    return el("tr", { "data-provider": e.provider_name, "data-status": e.status,
                      "data-enough-data": String(e.enough_data) },
      el("td", { "data-col": "provider" },
        el("i", { class: "swatch", style: `background:${colours[e.provider_name]}` }),
        el("b", {}, e.provider_name),
        el("span", { class: "via" }, e.upstream_model)),
      el("td", { "data-col": "status" }, badge(e.status),
        reason || until ? el("span", { class: "reason" }, reason + until) : null),
      el("td", { "data-col": "zdr" }, e.zero_data_retention ? "yes" : "no"),
      el("td", { class: "num", "data-col": "price" },
        `$${e.pricing.input_per_million.toFixed(2)} / $${e.pricing.output_per_million.toFixed(2)}`),
      ...pair("ttft", e.latency_last_1h, fmtMs, e.sample_size_last_1h),
      ...pair("throughput", e.throughput_last_1h, fmtTps, e.throughput_sample_size_last_1h),
      uptimeCell("uptime_15m", e.uptime_last_15m, e.attempts.last_15m),
      uptimeCell("uptime_1h", e.uptime_last_1h, e.attempts.last_1h),
      uptimeCell("uptime_1d", e.uptime_last_1d, e.attempts.last_1d),
      el("td", { class: "num", "data-col": "samples", "data-value": e.sample_size_last_1h },
        String(e.sample_size_last_1h)));
  }

  function renderTable() {
    tbody.replaceChildren(...sort.apply(endpoints).map(row));
  }

  // ---- SVG line chart ------------------------------------------------------------------
  const SVG = "http://www.w3.org/2000/svg";
  function s(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const mag = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * mag >= v) return m * mag;
    return 10 * mag;
  }

  /** Draw one metric: a line per provider, broken where a bucket has no data. */
  function drawChart(svg, series, field, fmt) {
    const W = svg.clientWidth || 560, H = svg.clientHeight || 220;
    const L = 52, R = 12, T = 10, B = 24;
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.replaceChildren();
    const all = series.flatMap((sr) => sr.points.map((pt) => pt[field])).filter((v) => v !== null);
    const starts = series.length ? series[0].points.map((pt) => pt.start) : [];
    if (!starts.length) return;
    const t0 = starts[0], t1 = starts[starts.length - 1] + (series[0].points[0].end - t0);
    const ymax = niceMax(all.length ? Math.max(...all) * 1.1 : 1);
    const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
    const y = (v) => T + (1 - v / ymax) * (H - T - B);
    for (let i = 0; i <= 4; i++) {
      const v = (ymax * i) / 4;
      svg.append(s("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      svg.append(s("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, fmt(v)));
    }
    for (let i = 0; i < starts.length; i += 3) {
      svg.append(s("text", { x: x(starts[i]), y: H - 6, "text-anchor": "middle" },
        fmtTime(starts[i]).slice(0, 5)));
    }
    if (!all.length) {
      svg.append(s("text", { class: "empty", x: (L + W - R) / 2, y: H / 2, "text-anchor": "middle",
                             "data-empty": "true" }, "not enough data"));
      return;
    }
    for (const sr of series) {
      const colour = colours[sr.provider_name];
      let d = "", pen = false;
      const g = s("g", { "data-provider": sr.provider_name });
      for (const pt of sr.points) {
        const v = pt[field];
        if (v === null) { pen = false; continue; }
        const px = x((pt.start + pt.end) / 2), py = y(v);
        d += `${pen ? "L" : "M"}${px.toFixed(1)},${py.toFixed(1)} `;
        pen = true;
        const dot = s("circle", { cx: px, cy: py, r: 3, fill: colour });
        dot.append(s("title", {}, `${sr.provider_name} · ${fmtTime(pt.start)}: ${fmt(v)}`));
        g.append(dot);
      }
      if (!d) continue;
      g.prepend(s("path", { d, fill: "none", stroke: colour, "stroke-width": 2,
                            "stroke-linejoin": "round", "data-provider": sr.provider_name }));
      svg.append(g);
    }
  }

  function renderCharts(series) {
    drawChart(document.getElementById("chart-ttft"), series, "ttft_p50", (v) => `${Math.round(v)}`);
    drawChart(document.getElementById("chart-throughput"), series, "throughput_p50",
      (v) => `${Math.round(v)}`);
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

  Dash.poll(async () => {
    const [doc, ts] = await Promise.all([getJSON(`${api}/endpoints`), getJSON(`${api}/timeseries`)]);
    endpoints = doc.data.endpoints;
    minSamples = doc.data.min_samples;
    document.getElementById("min-samples").textContent = minSamples;
    colours = Object.fromEntries(endpoints.map((e, i) => [e.provider_name, PALETTE[i % PALETTE.length]]));
    renderTable();
    renderCharts(ts.data.series);
    renderEvents(doc.data.health_events);
  });
})();
