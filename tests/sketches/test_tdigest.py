"""TDigest accuracy against exact numpy quantiles, merging, serialisation and properties."""

from __future__ import annotations

import itertools
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router_service.sketches.tdigest import FORMAT_VERSION, TDigest

QS = (0.5, 0.9, 0.95, 0.99, 0.999)
N = 200_000


def rank_error(sorted_values: np.ndarray, estimate: float, q: float) -> float:
    """|F(estimate) - q| with F the empirical CDF (mid-rank for ties)."""
    lo = np.searchsorted(sorted_values, estimate, side="left")
    hi = np.searchsorted(sorted_values, estimate, side="right")
    if lo / sorted_values.size <= q <= hi / sorted_values.size:
        return 0.0
    return min(abs(lo / sorted_values.size - q), abs(hi / sorted_values.size - q))


def datasets() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "lognormal": rng.lognormal(5.0, 1.0, N),
        "bimodal": np.concatenate([rng.normal(120, 15, N // 2), rng.normal(900, 60, N // 2)]),
        "pareto": rng.pareto(1.5, N) + 1.0,
    }


DATA = datasets()


def tolerance(q: float) -> float:
    """The issue's targets: 1e-3 around the median, 2e-4 in the far tail."""
    return 2e-4 if q >= 0.99 else 1e-3


@pytest.mark.parametrize("name", sorted(DATA))
@pytest.mark.parametrize("mode", ["batch", "chunks", "one_at_a_time", "merged"])
def test_rank_error_within_targets(name: str, mode: str) -> None:
    x = DATA[name]
    if mode == "one_at_a_time":
        x = x[:50_000]
    digest = TDigest(100)
    if mode == "batch":
        digest.add_batch(x)
    elif mode == "chunks":
        for i in range(0, x.size, 777):
            digest.add_batch(x[i : i + 777])
    elif mode == "one_at_a_time":
        for v in x.tolist():
            digest.add(v)
    else:
        parts = [TDigest(100) for _ in range(12)]
        for i, part in enumerate(parts):
            part.add_batch(x[i::12])
        digest = TDigest.merged(parts)
    s = np.sort(x)
    assert digest.count == x.size
    for q in QS:
        est = digest.quantile(q)
        assert est is not None
        assert rank_error(s, est, q) <= tolerance(q), (name, mode, q, est)
    assert digest.min == s[0] and digest.max == s[-1]


def test_centroids_and_bytes_are_bounded() -> None:
    digest = TDigest(100)
    digest.add_batch(DATA["lognormal"])
    assert digest.centroid_count <= 200
    assert len(digest.to_bytes()) <= 4096


def test_empty_digest_says_no_data() -> None:
    digest = TDigest()
    assert digest.count == 0
    assert digest.quantile(0.5) is None
    assert digest.quantiles([0.5, 0.9]) is None
    assert digest.cdf(1.0) is None
    assert digest.min is None and digest.max is None
    restored = TDigest.from_bytes(digest.to_bytes())
    assert restored.count == 0 and restored.quantile(0.99) is None


@pytest.mark.parametrize("n", [1, 2, 10, 50])
def test_tiny_inputs_match_numpy_exactly(n: int) -> None:
    values = np.random.default_rng(n).lognormal(3, 1, n)
    digest = TDigest()
    for v in values:
        digest.add(float(v))
    qs = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0]
    np.testing.assert_allclose(digest.quantiles(qs), np.quantile(values, qs), rtol=1e-12)
    for v in values:
        assert digest.cdf(float(v)) == pytest.approx(np.mean(values <= v))


def test_constant_input() -> None:
    digest = TDigest()
    digest.add_batch(np.full(100_000, 42.5))
    assert digest.quantiles(QS) == [42.5] * len(QS)
    assert digest.cdf(42.5) == 1.0
    assert digest.cdf(42.0) == 0.0


def test_cdf_inverts_quantile() -> None:
    digest = TDigest()
    digest.add_batch(DATA["lognormal"])
    for q in (0.01, 0.1, 0.5, 0.9, 0.99):
        est = digest.quantile(q)
        assert est is not None
        assert digest.cdf(est) == pytest.approx(q, abs=2e-3)


def test_rejects_bad_input() -> None:
    digest = TDigest()
    with pytest.raises(ValueError, match="finite"):
        digest.add(float("nan"))
    with pytest.raises(ValueError, match="finite"):
        digest.add_batch([1.0, float("inf")])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        digest.quantile(1.5)
    with pytest.raises(ValueError, match="compression"):
        TDigest(1)
    assert digest.count == 0


def test_merge_is_order_insensitive() -> None:
    x = DATA["lognormal"]
    parts = np.array_split(x, 9)
    digests = []
    for part in parts:
        d = TDigest()
        d.add_batch(part)
        digests.append(d)
    forward = TDigest()
    for d in digests:
        forward.merge(d)
    backward = TDigest()
    for d in reversed(digests):
        backward.merge(d)
    at_once = TDigest.merged(digests[::2] + digests[1::2])
    s = np.sort(x)
    for q in QS:
        estimates = [d.quantile(q) for d in (forward, backward, at_once)]
        assert all(e is not None for e in estimates)
        assert all(rank_error(s, e, q) <= tolerance(q) for e in estimates), (q, estimates)
    assert forward.count == backward.count == at_once.count == x.size
    assert forward.min == backward.min == s[0]


def test_merge_leaves_other_and_handles_self() -> None:
    a, b = TDigest(), TDigest()
    a.add_batch([1.0, 2.0, 3.0])
    b.add_batch([10.0, 20.0])
    a.merge(b)
    assert a.count == 5 and b.count == 2 and b.max == 20.0
    a.merge(a)
    assert a.count == 10 and a.max == 20.0


def test_serialisation_round_trips() -> None:
    digest = TDigest(100)
    digest.add_batch(DATA["bimodal"])
    digest.add(3.5)
    data = digest.to_bytes()
    restored = TDigest.from_bytes(data)
    assert restored.count == digest.count
    assert restored.min == digest.min and restored.max == digest.max
    assert restored.compression == digest.compression
    assert restored.quantiles(QS) == digest.quantiles(QS)
    assert restored.to_bytes() == data
    assert data[2] == FORMAT_VERSION


def test_from_bytes_rejects_corrupt_input() -> None:
    digest = TDigest()
    digest.add_batch(np.arange(1000.0))
    data = digest.to_bytes()
    with pytest.raises(ValueError, match="too short"):
        TDigest.from_bytes(data[:10])
    with pytest.raises(ValueError, match="magic"):
        TDigest.from_bytes(b"XX" + data[2:])
    with pytest.raises(ValueError, match="version"):
        TDigest.from_bytes(data[:2] + bytes([99]) + data[3:])
    with pytest.raises(ValueError, match="length"):
        TDigest.from_bytes(data[:-1])
    # Header count disagreeing with the weights.
    bad_count = data[:12] + struct.pack("<Q", 5) + data[20:]
    with pytest.raises(ValueError, match="weights sum"):
        TDigest.from_bytes(bad_count)


finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(finite, min_size=1, max_size=3000),
    qs=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=2, max_size=20),
)
def test_quantiles_monotone_and_bounded(values: list[float], qs: list[float]) -> None:
    digest = TDigest(20)
    digest.add_batch(values)
    qs = sorted(qs)
    est = digest.quantiles(qs)
    assert est is not None
    assert all(a <= b for a, b in itertools.pairwise(est))
    assert all(min(values) <= e <= max(values) for e in est)
    assert digest.count == len(values)


@settings(max_examples=40, deadline=None)
@given(chunks=st.lists(st.lists(finite, max_size=400), min_size=1, max_size=12))
def test_count_is_exact_across_add_paths_and_merges(chunks: list[list[float]]) -> None:
    digests = []
    for i, chunk in enumerate(chunks):
        d = TDigest(20)
        if i % 2:
            for v in chunk:
                d.add(v)
        else:
            d.add_batch(chunk)
        digests.append(d)
    total = sum(len(c) for c in chunks)
    merged = TDigest.merged(digests)
    assert merged.count == total
    assert TDigest.from_bytes(merged.to_bytes()).count == total
    if total:
        flat = [v for c in chunks for v in c]
        assert merged.min == min(flat) and merged.max == max(flat)


def _flush_as_before(digest: TDigest, values: list[float]) -> tuple[bytes, bytes]:
    """The centroids a flush of ``values`` gave before ``_merge_sorted``: a stable
    argsort of the centroids followed by the values, then one compression pass."""
    means, weights = digest._means, digest._weights
    reference = TDigest(digest.compression)
    reference._set_compressed(
        np.concatenate([means, np.asarray(values, dtype=np.float64)]),
        np.concatenate([weights, np.ones(len(values))]),
    )
    return reference._means.tobytes(), reference._weights.tobytes()


@pytest.mark.parametrize(
    "kind", ["lognormal", "few distinct values", "signed zeros", "rounded, negative too"]
)
def test_a_flush_gives_the_centroids_of_a_stable_sort(kind: str) -> None:
    """``_flush`` sorts the new values alone and slots the centroids in (faster);
    the centroids must be those of the stable sort of both, bit for bit: ties
    between a centroid and equal values (many with few distinct values) decide
    which band a centroid's weight lands in, and zeros go the old way (-0.0 and
    0.0 compare equal but are different floats)."""
    rng = np.random.default_rng(11)
    draw = {
        "lognormal": lambda n: rng.lognormal(3.0, 1.0, n),
        "few distinct values": lambda n: rng.integers(1, 12, n).astype(np.float64),
        "signed zeros": lambda n: rng.choice([-0.0, 0.0, 1.0, 2.5], n),
        "rounded, negative too": lambda n: np.round(rng.uniform(-5, 5, n), 1),
    }[kind]
    for compression in (10.0, 100.0):
        digest = TDigest(compression)
        for n in (1, 7, 300, 800, 1500, 2000, 5, 900):
            values = draw(n).tolist()
            expected = _flush_as_before(digest, values)
            count = digest.count
            digest._buf = list(values)
            digest._flush()
            assert (digest._means.tobytes(), digest._weights.tobytes()) == expected
            assert digest.count == count + n
