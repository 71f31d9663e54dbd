"""What a request cost: the tokens each attempt processed, at the catalog's prices.

Why here and not from the provider's bill: the sidecar sees every attempt and
the catalog's prices (the ones routing compares), so ``usage.cost`` (the field
OpenRouter puts on usage), ``routing.cost_usd`` and the spend counter agree
with ``sort: cost`` and ``max_price``. The formula is the request-cost rule of
``router_common.routing.cost`` (tokens / 1e6 x price per million).

Which attempts cost: one that answered (its usage, or counted tokens when the
provider sent none), and one that failed after producing tokens (a stream
that broke or whose app left midway: the provider bills what it generated).
An attempt that failed before its first token produced nothing and costs
nothing here (a hedge's cancelled loser shows its own input estimate).
Token counts from the provider's usage are exact; without usage the input is
the sidecar's estimate (characters / 4) and the output the content chunks
counted, and ``estimated`` says so.
"""

from __future__ import annotations

from typing import Any

from router_common.routing.cost import usage_cost
from sidecar.metrics import SidecarMetrics
from sidecar.ranking_client import Route
from sidecar.upstream import AttemptRecord


def charge(
    metrics: SidecarMetrics,
    model: str,
    route: Route,
    rec: AttemptRecord,
    input_tokens: int | None,
    estimated_input_tokens: int,
    output_exact: bool,
) -> float | None:
    """Cost ``rec`` (sets ``rec.cost``), count it in the spend counter; its total in USD.

    ``input_tokens`` is the provider's count (None when it sent no usage);
    ``rec.output_tokens`` is the output count, exact when ``output_exact``.
    None (and nothing counted) when the attempt produced no tokens.
    """
    if rec.status != "ok" and rec.output_tokens <= 0:
        return None
    rec.input_tokens = input_tokens
    exact_in = input_tokens is not None
    cost = usage_cost(
        input_tokens if input_tokens is not None else estimated_input_tokens,
        rec.output_tokens,
        route.input_price_per_million,
        route.output_price_per_million,
    )
    rec.cost = cost
    rec.cost_estimated = not (exact_in and output_exact)
    total = cost.total
    if total > 0:
        # Label values: the model was ranked (so it is in the catalog) and the
        # provider comes from that ranking; never from the request's free text.
        metrics.count_spend(model, route.provider, total)
    return total


def request_cost(records: list[AttemptRecord]) -> dict[str, Any]:
    """``routing.cost_usd``: every costed attempt of the request, split input / output."""
    inp = out = 0.0
    estimated = False
    for rec in records:
        cost = rec.cost
        if cost is not None:
            inp += cost[0]
            out += cost[1]
            estimated = estimated or rec.cost_estimated
    if not inp and not out:
        return {"total": 0.0, "input": 0.0, "output": 0.0, "estimated": estimated}
    return {
        "total": round(inp + out, 12),
        "input": round(inp, 12),
        "output": round(out, 12),
        "estimated": estimated,
    }
