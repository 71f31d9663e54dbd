// Model list: one row per catalog model with its best P50 TTFT and throughput; live.
"use strict";

(() => {
  const { el, noData, fmtMs, fmtTps, getJSON, modelHref, badge } = Dash;
  const table = document.getElementById("models");
  const tbody = table.querySelector("tbody");
  const HEALTH_ORDER = ["healthy", "degraded", "probing", "ejected"];
  // Share of endpoints not healthy: sorts models with trouble after the clean ones.
  const unhealthy = (m) => {
    const c = m.status_counts || {};
    return (m.endpoint_count - (c.healthy || 0)) / Math.max(1, m.endpoint_count);
  };
  const columns = {
    model: { value: (m) => m.id, dir: 1 },
    providers: { value: (m) => m.endpoint_count, dir: -1 },
    health: { value: unhealthy, dir: 1 },
    ttft: { value: (m) => m.best_p50_ttft_ms, dir: 1 },
    throughput: { value: (m) => m.best_p50_throughput, dir: -1 },
  };
  let models = [];
  const sort = Dash.sorter(table, columns, render, Dash.sortFromHash(columns));

  function metricCell(col, value, text, via, detail) {
    if (value === null || value === undefined) {
      return el("td", { class: "num", "data-col": col, "data-value": "" }, noData(detail));
    }
    return el("td", { class: "num", "data-col": col, "data-value": String(value) },
      text, via ? el("span", { class: "via" }, `via ${via}`) : null);
  }

  function row(m) {
    const counts = m.status_counts || {};
    const health = HEALTH_ORDER.filter((s) => counts[s]).map((s) =>
      el("span", { title: `${counts[s]} ${s}` }, badge(s), `${counts[s]} `));
    return el("tr", { "data-model-id": m.id },
      el("td", { "data-col": "model" }, el("a", { href: modelHref(m.id) }, m.id)),
      el("td", { "data-col": "providers", class: "tags" },
        el("b", {}, `${m.endpoint_count} `), m.providers.map((p) => el("span", {}, p))),
      el("td", { "data-col": "health", class: "counts" }, health),
      metricCell("ttft", m.best_p50_ttft_ms, fmtMs(m.best_p50_ttft_ms), m.best_p50_ttft_provider,
        "no provider has enough TTFT samples in the last hour"),
      metricCell("throughput", m.best_p50_throughput, fmtTps(m.best_p50_throughput),
        m.best_p50_throughput_provider, "no provider has enough throughput samples"));
  }

  function render() {
    tbody.replaceChildren(...sort.apply(models).map(row));
  }

  Dash.poll(async () => {
    const doc = await getJSON("/v1/models");
    models = doc.data;
    document.getElementById("min-samples").textContent = doc.min_samples;
    document.getElementById("catalog-version").textContent = doc.catalog_version;
    render();
  });
})();
