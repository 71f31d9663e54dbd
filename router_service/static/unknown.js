// The page for /models/<id> when <id> is not in the catalog: what was asked for, the
// closest ids (same creator, or sharing a word), every model, and the way back.
"use strict";

(() => {
  const { el, getJSON, modelHref } = Dash;
  const asked = location.pathname.replace(/^\/models\//, "").split("/")
    .map((part) => { try { return decodeURIComponent(part); } catch { return part; } }).join("/");
  document.getElementById("crumb-model").textContent = asked || "unknown model";
  document.getElementById("message").textContent =
    `There is no model “${asked}” in this router's catalog (model ids are creator/name).`;

  function words(id) {
    return new Set(id.toLowerCase().split(/[^a-z0-9.]+/).filter((w) => w.length > 1));
  }

  Dash.poll(async () => {
    const doc = await getJSON("/v1/models");
    const ids = doc.data.map((m) => m.id);
    const mine = words(asked);
    const creator = asked.split("/")[0].toLowerCase();
    const close = ids.filter((id) => id.split("/")[0].toLowerCase() === creator
      || [...words(id)].some((w) => mine.has(w)));
    const link = (id) => el("li", {}, el("a", { href: modelHref(id), "data-model-id": id }, id));
    document.getElementById("suggest-title").hidden = !close.length;
    document.getElementById("suggestions").replaceChildren(...close.map(link));
    document.getElementById("all-models").replaceChildren(...ids.map(link));
  });
})();
