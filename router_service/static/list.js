// Model list: one row per catalog model: cheapest price, best P50/P95 TTFT and throughput,
// health; sortable, filterable (model id or provider name, kept in ?q=); live.
"use strict";

(() => {
  const { el, noData, fmtMs, fmtTps, getJSON, modelHref, badge } = Dash;
  const table = document.getElementById("models");
  const tbody = table.querySelector("tbody");
  const filter = document.getElementById("filter");
  const shown = document.getElementById("shown");
  const HEALTH_ORDER = ["healthy", "degraded", "probing", "ejected", "no_data"];
  // Share of endpoints in trouble: sorts models with trouble after the clean ones.
  const unhealthy = (m) => {
    const c = m.status_counts || {};
    return (m.endpoint_count - (c.healthy || 0) - (c.no_data || 0)) / Math.max(1, m.endpoint_count);
  };
  const columns = {
    model: { value: (m) => m.id, dir: 1 },
    providers: { value: (m) => m.endpoint_count, dir: -1 },
    health: { value: unhealthy, dir: 1 },
    price: { value: (m) => m.cheapest.input_per_million + m.cheapest.output_per_million, dir: 1 },
    ttft: { value: (m) => m.best_p50_ttft_ms, dir: 1 },
    ttft_p95: { value: (m) => m.best_p95_ttft_ms, dir: 1 },
    throughput: { value: (m) => m.best_p50_throughput, dir: -1 },
  };
  let models = [];
  const sort = Dash.sorter(table, columns, render, Dash.sortFromHash(columns));
  filter.value = Dash.queryParam("q") || "";

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
      el("span", { title: `${counts[s]} ${Dash.STATE_LABEL[s] || s}` }, badge(s), `${counts[s]} `));
    const c = m.cheapest;
    return el("tr", { "data-model-id": m.id },
      el("td", { "data-col": "model" }, el("a", { href: modelHref(m.id) }, m.id)),
      el("td", { "data-col": "providers", class: "tags" },
        el("b", {}, `${m.endpoint_count} `), m.providers.map((p) => el("span", {}, p))),
      el("td", { "data-col": "health", class: "counts" }, health),
      el("td", { class: "num", "data-col": "price",
                 "data-value": String(c.input_per_million + c.output_per_million) },
        `$${c.input_per_million.toFixed(2)} / $${c.output_per_million.toFixed(2)}`,
        el("span", { class: "via" }, `via ${c.provider_name}`)),
      metricCell("ttft", m.best_p50_ttft_ms, fmtMs(m.best_p50_ttft_ms), m.best_p50_ttft_provider,
        "no provider has enough TTFT samples in the last hour"),
      metricCell("ttft_p95", m.best_p95_ttft_ms, fmtMs(m.best_p95_ttft_ms),
        m.best_p95_ttft_provider, "no provider has enough TTFT samples in the last hour"),
      metricCell("throughput", m.best_p50_throughput, fmtTps(m.best_p50_throughput),
        m.best_p50_throughput_provider, "no provider has enough throughput samples"));
  }

  function matches(m, words) {
    const text = `${m.id} ${m.providers.join(" ")}`.toLowerCase();
    return words.every((w) => text.includes(w));
  }

  function render() {
    const words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    const visible = models.filter((m) => matches(m, words));
    if (!visible.length) {
      const why = models.length
        ? `no model or provider matches “${filter.value}”`
        : "the catalog has no models";
      tbody.replaceChildren(el("tr", { class: "empty" },
        el("td", { colspan: "7", class: "nodata", "data-empty": "true" }, why)));
    } else {
      tbody.replaceChildren(...sort.apply(visible).map(row));
    }
    shown.textContent = words.length ? `${visible.length} of ${models.length} models` : "";
  }

  filter.addEventListener("input", () => {
    Dash.queryParam("q", filter.value);
    render();
  });

  Dash.poll(async () => {
    const doc = await getJSON("/v1/models");
    models = doc.data;
    document.getElementById("min-samples").textContent = doc.min_samples;
    document.getElementById("catalog-version").textContent = doc.catalog_version;
    render();
  });
})();
