"""The sidecar's fallback ranking (router unreachable) orders as the router would with no metrics.

Both apply the rules in ``router_common.routing`` (hard filters, request cost,
near-tie draw, ``order`` first); this property test proves they are wired
the same way: on generated catalogs and preferences, with the same seed, the
router's ``rank()`` over empty stats and the sidecar's ``rank_from_catalog``
give the same providers in the same order and exclude the same ones for the
same reasons.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from router_common.catalog_model import Catalog, Endpoint, Model, Provider
from router_common.pb import router_pb2
from router_service.ranking import RankingConfig, RankingInputError, rank
from router_service.wire import routing_request
from sidecar.preferences import RequestError
from sidecar.ranking_client import rank_from_catalog

MODEL = "acme/parity-1"
NAMES = [f"p{i}" for i in range(8)]
# A few distinct prices, so exact ties and near ties (within 5%) both occur.
PRICES = st.sampled_from([0.0, 0.1, 0.5, 0.52, 1.0, 1.03, 2.0, 4.0])


@st.composite
def catalogs(draw: st.DrawFn) -> Catalog:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=8, unique=True))
    providers = {n: Provider(n, f"http://127.0.0.1:1/{n}", "", draw(st.booleans())) for n in names}
    endpoints = tuple(
        Endpoint(MODEL, providers[n], f"{n}-model", draw(PRICES), draw(PRICES)) for n in names
    )
    return Catalog(providers=providers, models={MODEL: Model(MODEL, endpoints)})


@st.composite
def preferences(draw: st.DrawFn, names: list[str]) -> router_pb2.RoutingPreferences:
    prefs = router_pb2.RoutingPreferences()
    # Without a sort the router load-balances on its weights, which need its
    # metrics; the fallback keeps the catalog order then (README), so no parity.
    prefs.sort = draw(
        st.sampled_from([router_pb2.SORT_BY_COST, router_pb2.SORT_BY_TTFT, router_pb2.SORT_BY_TPS])
    )
    pool = st.sampled_from([*names, "p9"])  # p9: named by the caller, not in the catalog
    only = draw(st.one_of(st.just([]), st.lists(pool, min_size=1, max_size=4, unique=True)))
    ignore = draw(st.lists(pool.filter(lambda n: n not in only), max_size=3, unique=True))
    allowed = [n for n in names if (not only or n in only) and n not in ignore]
    order = draw(st.lists(st.sampled_from(allowed), max_size=3, unique=True)) if allowed else []
    prefs.only.extend(only)
    prefs.ignore.extend(ignore)
    prefs.order.extend(order)
    prefs.zero_data_retention = draw(st.booleans())
    if draw(st.booleans()):
        prefs.max_price.input_per_million = draw(PRICES)
    if draw(st.booleans()):
        prefs.max_price.output_per_million = draw(PRICES)
    if draw(st.integers(0, 4)) == 0:
        prefs.allow_fallbacks = False
    return prefs


@settings(max_examples=400, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_fallback_orders_as_the_router_does_with_no_metrics(data: st.DataObject, seed: int):
    catalog = data.draw(catalogs())
    names = [e.provider.name for e in catalog.models[MODEL].endpoints]
    prefs = data.draw(preferences(names))
    tokens = data.draw(st.sampled_from([(0, 0), (1000, 200), (50, 4000)]))
    wire = router_pb2.RankProvidersRequest(
        model=MODEL,
        preferences=prefs,
        estimated_input_tokens=tokens[0],
        max_output_tokens=tokens[1],
    )
    try:
        request = routing_request(wire, catalog.providers)
    except RankingInputError:
        return  # both sides refuse it (tested elsewhere); nothing to compare
    # No exploration: it is data-driven and the fallback has no data.
    config = RankingConfig(exploration_share=0, exploration_share_unknown=0)
    result = rank(request, catalog.models[MODEL], {}, {}, 0.0, random.Random(seed), config)
    router_order = [r.endpoint.provider.name for r in result.ranked]
    router_excluded = {
        x.endpoint.provider.name: x.reason.code
        for x in result.excluded
        if x.reason.code != "fallbacks_disabled"
    }
    try:
        routes, excluded = rank_from_catalog(
            catalog, MODEL, prefs, tokens[0], tokens[1], random.Random(seed)
        )
    except RequestError as exc:
        assert exc.code == "no_eligible_provider" and router_order == []
        return
    assert [r.provider for r in routes] == router_order
    assert {x["provider"]: x["reason"]["code"] for x in excluded} == router_excluded


def test_the_property_sees_near_ties_shuffled_both_ways() -> None:
    # A guard for the property: near ties must actually be drawn, not only sorted.
    a, b = (Provider(n, f"http://127.0.0.1:1/{n}", "", False) for n in ("a", "b"))
    catalog = Catalog(
        providers={"a": a, "b": b},
        models={
            MODEL: Model(
                MODEL, (Endpoint(MODEL, a, "m", 1.0, 1.0), Endpoint(MODEL, b, "m", 1.0, 1.02))
            )
        },
    )
    prefs = router_pb2.RoutingPreferences(sort=router_pb2.SORT_BY_COST)
    firsts = {
        rank_from_catalog(catalog, MODEL, prefs, rng=random.Random(s))[0][0].provider
        for s in range(40)
    }
    assert firsts == {"a", "b"}
