"""Execution order inside one tier: ``order`` first, then by sort key or by weighted draw.

Two draws keep a fleet of callers from stampeding one endpoint:

- **Near ties.** Sort values within ``tol`` (relative) of the best value of
  their cluster are shuffled per request. Clusters are anchored at their first
  (best) value, not chained, so a long run of 4%-apart values does not become
  one giant tie.
- **Weighted draw** (load balance). Efraimidis and Spirakis (2006): sorting
  by ``-ln(1 - u) / w`` with ``u`` uniform draws an order without replacement
  in which P(first = i) = w_i / sum(w). One ``random()`` per item and a sort,
  no cumulative tables, and it needs no normalised weights.

Randomness comes only from the caller's ``rng``, so a seeded
``random.Random`` makes every order reproducible, and the router and the
sidecar's fallback give the very same order from the same seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

T = TypeVar("T")

#: Sort values within 5% of their cluster's best are a tie (shuffled per request).
DEFAULT_NEAR_TIE_TOLERANCE = 0.05

_log = math.log


def weighted_indices(
    indices: Iterable[int], weights: Sequence[float], rng: random.Random
) -> list[int]:
    """``indices`` in a random order weighted by ``weights[i]`` (Efraimidis-Spirakis; w > 0)."""
    rnd = rng.random
    keyed = [(-_log(1.0 - rnd()) / weights[i], i) for i in indices]
    keyed.sort()
    return [i for _, i in keyed]


def weighted_order(items: Sequence[T], weight: Callable[[T], float], rng: random.Random) -> list[T]:
    """``items`` in a random order weighted by ``weight(item)`` (see ``weighted_indices``)."""
    drawn = weighted_indices(range(len(items)), [weight(item) for item in items], rng)
    return [items[i] for i in drawn]


def weighted_choice(items: Sequence[T], weights: Sequence[float], rng: random.Random) -> T:
    """One of ``items`` with probability proportional to its weight (w > 0).

    A single pick, so one ``random()`` and a cumulative walk rather than a
    whole weighted order; equal weights draw uniformly with ``randrange``.
    """
    if len(items) == 1:
        return items[0]
    if min(weights) == max(weights):
        return items[rng.randrange(len(items))]
    x = rng.random() * sum(weights)
    for item, w in zip(items, weights, strict=True):
        x -= w
        if x < 0:
            return item
    return items[-1]


def near_tie_order(known: list[tuple[float, int]], tol: float, rng: random.Random) -> list[int]:
    """Indices of ``(key, index)`` pairs by ascending key, near ties shuffled; sorts ``known``."""
    known.sort()
    n = len(known)
    if n == 1:
        return [known[0][1]]
    rnd = rng.random
    out: list[int] = []
    i = 0
    while i < n:
        anchor = known[i][0]
        limit = anchor + tol * abs(anchor)
        j = i + 1
        while j < n and known[j][0] <= limit:
            j += 1
        if j - i == 1:
            out.append(known[i][1])
        elif j - i == 2:
            a, b = known[i][1], known[i + 1][1]
            out.extend((a, b) if rnd() < 0.5 else (b, a))
        else:  # uniform shuffle via random sort keys (C-level random(), unlike rng.shuffle)
            group = [(rnd(), k[1]) for k in known[i:j]]
            group.sort()
            out.extend(g[1] for g in group)
        i = j
    return out


def order_rest(
    rest: Iterable[int],
    keys: Sequence[float | None] | None,
    weights: Sequence[float] | None,
    tol: float,
    rng: random.Random,
) -> list[int]:
    """Candidate indices ordered by ascending ``keys`` (near ties shuffled, None last and
    shuffled), else by a draw weighted by ``weights``, else as given."""
    if keys is None:
        if weights is None:
            return list(rest)
        return weighted_indices(rest, weights, rng)
    known: list[tuple[float, int]] = []
    unknown: list[int] = []
    for i in rest:
        k = keys[i]
        if k is None:
            unknown.append(i)
        else:
            known.append((k, i))
    out = near_tie_order(known, tol, rng) if known else []
    if unknown:
        rng.shuffle(unknown)
        out.extend(unknown)
    return out


def order_tier(
    indices: Iterable[int],
    names: Sequence[str],
    order_pos: Mapping[str, int],
    keys: Sequence[float | None] | None,
    weights: Sequence[float] | None,
    tol: float,
    rng: random.Random,
) -> list[int]:
    """One tier: the providers named in ``order`` first, in that order, then the rest.

    ``names[i]`` is candidate i's provider; ``order_pos`` maps a provider to its
    place in the request's ``order`` (empty when there is none).
    """
    if not order_pos:
        return order_rest(indices, keys, weights, tol, rng)
    ordered: list[tuple[int, int]] = []
    rest: list[int] = []
    for i in indices:
        pos = order_pos.get(names[i])
        if pos is None:
            rest.append(i)
        else:
            ordered.append((pos, i))
    ordered.sort()
    out = [i for _, i in ordered]
    if rest:
        out.extend(order_rest(rest, keys, weights, tol, rng))
    return out


def kept_without_fallbacks(providers: Sequence[str], order: Sequence[str]) -> int:
    """How many leading entries of a ranking ``allow_fallbacks: false`` keeps.

    OpenRouter documents false as "use only the primary provider, or your custom
    providers in `order`": with ``order``, the leading run of endpoints whose
    provider ``order`` names (they rank first, in that order), so a failure of the
    first still goes to the next provider the app listed and never to one it did
    not; without ``order`` (or when no listed provider leads), the first only.
    One rule for the router and the sidecar, so every ranking source agrees.
    """
    if not providers:
        return 0
    named = set(order)
    if providers[0] not in named:
        return 1
    kept = 1
    while kept < len(providers) and providers[kept] in named:
        kept += 1
    return kept
