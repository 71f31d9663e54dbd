"""What one request is estimated to cost on an endpoint, for ``sort: cost`` and load balance.

With token estimates the cost is literal, in USD per request::

    cost = input_tokens * input_price / 1e6 + max_output_tokens * output_price / 1e6

Without them (both 0) a request has no size, so endpoints are compared by the
blended price ``(input + k * output) / (1 + k)`` in USD per million tokens,
k = ``blend_output_weight`` (default 3: chat workloads are output-heavy and
output tokens dominate the bill, the weighting Artificial Analysis and
OpenRouter's price sort also use). Both are linear in the two prices, so the
rule is two factors computed once per request and one multiply-add per
endpoint, which keeps it on the ranking's hot path.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

#: Output tokens weigh this much more than input tokens in the blended price.
DEFAULT_BLEND_OUTPUT_WEIGHT = 3.0

#: ``cost`` is USD per request, or a blended USD per million tokens.
CostBasis = Literal["request", "blended_per_mtok"]


class CostFactors(NamedTuple):
    """Multipliers of the input and output price per million tokens, and what they yield."""

    input: float
    output: float
    basis: CostBasis


def cost_factors(
    input_tokens: int, output_tokens: int, blend_output_weight: float = DEFAULT_BLEND_OUTPUT_WEIGHT
) -> CostFactors:
    """The factors for one request (see the module docstring)."""
    if input_tokens or output_tokens:
        return CostFactors(input_tokens / 1_000_000, output_tokens / 1_000_000, "request")
    k = blend_output_weight
    return CostFactors(1.0 / (1.0 + k), k / (1.0 + k), "blended_per_mtok")


class UsageCost(NamedTuple):
    """What tokens that were actually processed cost, in USD, split by direction."""

    input: float
    output: float

    @property
    def total(self) -> float:
        return self.input + self.output


def usage_cost(
    input_tokens: int, output_tokens: int, input_price: float, output_price: float
) -> UsageCost:
    """The cost of ``input_tokens`` and ``output_tokens`` at these prices per million tokens.

    The request-basis rule of ``cost_factors`` (tokens / 1e6 x price), applied to
    counted tokens instead of estimates; zero tokens cost nothing (never the
    blended price).
    """
    factors = CostFactors(
        max(0, input_tokens) / 1_000_000, max(0, output_tokens) / 1_000_000, "request"
    )
    return UsageCost(input_price * factors.input, output_price * factors.output)


def endpoint_cost(factors: CostFactors, input_price: float, output_price: float) -> float:
    """The estimated cost of the request on an endpoint with these prices per million tokens."""
    return input_price * factors[0] + output_price * factors[1]
