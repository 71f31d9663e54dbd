// Shared helpers of the router dashboard: formatting, sortable tables, live polling.
// Plain browser JS, no build step, no network access beyond this router.
"use strict";

const Dash = (() => {
  const params = new URLSearchParams(location.search);
  // Refresh period; ?refresh=<ms> overrides it (tests, slow links). Never below 200 ms,
  // never above an hour: setTimeout takes a 32-bit int, so Infinity or 2**32 was 0 ms
  // (polling back to back).
  const REFRESH_MS = Math.min(3600000, Math.max(200, Number(params.get("refresh")) || 2000));
  // How long one fetch may wait for the router: 5 refresh periods, 2 s to 30 s (10 s by
  // default). Without a deadline a hung router (connection open, no answer) left the page
  // saying "live" over stale figures forever; a refused connection already said so.
  const FETCH_TIMEOUT_MS = Math.min(30000, Math.max(2000, 5 * REFRESH_MS));

  /** Create an element with attributes and children (strings become text nodes, never HTML). */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "style") node.style.cssText = v;
      else if (k.startsWith("data-") || k.startsWith("aria-") || k === "title" || k === "href"
               || k === "colspan" || k === "id") node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  const noData = (detail) => el("span", { class: "nodata", title: detail || "" }, "not enough data");

  function fmtMs(v) {
    if (v === null || v === undefined) return null;
    return v >= 10000 ? `${(v / 1000).toFixed(1)} s` : `${Math.round(v)} ms`;
  }
  function fmtTps(v) {
    if (v === null || v === undefined) return null;
    return v >= 100 ? `${Math.round(v)} tok/s` : `${v.toFixed(1)} tok/s`;
  }
  /** A ratio as a percentage: one decimal, more when that would read 100 (or 0) for a
   *  window with a failure (or a success): 0.9995 is "99.95%", never "100.0%". */
  function fmtPct(v) {
    if (v === null || v === undefined) return null;
    if (v >= 1) return "100%";
    if (v <= 0) return "0%";
    const pct = v * 100;
    let digits = 1;
    while (digits < 4 && ["100", "0"].includes(String(Number(pct.toFixed(digits))))) digits += 1;
    return `${pct.toFixed(digits)}%`;
  }
  function fmtTime(unixSeconds) {
    return new Date(unixSeconds * 1000).toLocaleTimeString([], { hour12: false });
  }
  function modelHref(id) {
    return "/models/" + id.split("/").map(encodeURIComponent).join("/");
  }
  function apiModelPath(id) {
    return "/v1/models/" + id.split("/").map(encodeURIComponent).join("/");
  }

  async function getJSON(url) {
    const signal = AbortSignal.timeout(FETCH_TIMEOUT_MS);
    let res, body;
    try {
      res = await fetch(url, { cache: "no-store", headers: { Accept: "application/json" }, signal });
      body = await res.json().catch((err) => { if (signal.aborted) throw err; return null; });
    } catch (err) {
      if (!signal.aborted) throw err;
      throw new Error(`no answer within ${FETCH_TIMEOUT_MS / 1000} s`);
    }
    if (!res.ok) {
      const msg = body && body.error ? body.error.message : `HTTP ${res.status}`;
      const err = new Error(msg);
      err.status = res.status;
      throw err;
    }
    return body;
  }

  /**
   * Sortable table state. `columns` maps a sort key to {value(row), dir: default direction}.
   * Nulls (not enough data) always sort last, whatever the direction.
   */
  function sorter(table, columns, onChange, initial) {
    const state = { key: initial ? initial.key : null, dir: initial ? initial.dir : 1 };
    const ths = [...table.querySelectorAll("th[data-sort]")];
    const paint = () => ths.forEach((th) => {
      const on = th.dataset.sort === state.key;
      th.setAttribute("aria-sort", on ? (state.dir > 0 ? "ascending" : "descending") : "none");
    });
    ths.forEach((th) => th.addEventListener("click", () => {
      const key = th.dataset.sort;
      if (state.key === key) state.dir = -state.dir;
      else { state.key = key; state.dir = columns[key].dir || 1; }
      paint();
      history.replaceState(null, "", `#sort=${state.key}:${state.dir > 0 ? "asc" : "desc"}`);
      onChange();
    }));
    paint();
    return {
      state,
      apply(rows) {
        if (!state.key) return rows;
        const value = columns[state.key].value;
        return rows
          .map((row, i) => ({ row, i, v: value(row) }))
          .sort((a, b) => {
            const an = a.v === null || a.v === undefined, bn = b.v === null || b.v === undefined;
            if (an || bn) return an === bn ? a.i - b.i : an ? 1 : -1;
            if (a.v < b.v) return -state.dir;
            if (a.v > b.v) return state.dir;
            return a.i - b.i;
          })
          .map((x) => x.row);
      },
    };
  }

  /** Sort requested in the URL fragment (#sort=ttft:asc), so a reload keeps it. */
  function sortFromHash(columns) {
    const m = /sort=([a-z0-9_]+):(asc|desc)/.exec(location.hash);
    // Own keys only: "constructor" (a key of every object) is not a column.
    return m && Object.hasOwn(columns, m[1]) ? { key: m[1], dir: m[2] === "asc" ? 1 : -1 } : null;
  }

  /** Run `load` now and every REFRESH_MS after each completes; report status in #status. */
  function poll(load) {
    const status = document.getElementById("status");
    let refreshes = 0;
    const tick = async () => {
      try {
        await load();
        refreshes += 1;
        status.dataset.state = "live";
        status.dataset.refreshes = String(refreshes);
        status.textContent = `live · updated ${new Date().toLocaleTimeString([], { hour12: false })}`;
      } catch (err) {
        status.dataset.state = "error";
        status.textContent = `cannot reach the router (${err.message}); retrying`;
        if (err.status === 404) return;  // the model left the catalog: stop polling
      }
      setTimeout(tick, REFRESH_MS);
    };
    tick();
  }

  // "no_data": an endpoint nobody called in the window. Ranking treats it as healthy
  // (innocent until proven otherwise); the dashboard does not claim it works.
  const STATE_LABEL = { no_data: "no data" };
  function badge(state) {
    return el("span", { class: `badge ${state}`, "data-status": state }, STATE_LABEL[state] || state);
  }

  /** Read or write one query parameter without reloading (keeps the others). */
  function queryParam(name, value) {
    const url = new URL(location.href);
    if (value === undefined) return url.searchParams.get(name);
    url.searchParams.set(name, value);
    history.replaceState(null, "", url);
    return value;
  }

  return { el, noData, fmtMs, fmtTps, fmtPct, fmtTime, modelHref, apiModelPath, getJSON,
           sorter, sortFromHash, poll, badge, queryParam, STATE_LABEL, REFRESH_MS, FETCH_TIMEOUT_MS };
})();
