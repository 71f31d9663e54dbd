"""A merging t-digest in numpy: percentiles of TTFT and throughput in a few KB.

Why a t-digest: ranking needs tail percentiles (P95, P99) over windows that
hold from a handful to millions of samples, digests must merge (a window is
the merge of its bucket digests, and later replicas will merge their peers'),
and they must travel as a few KB of bytes. A t-digest keeps the *rank* error
small where it matters (the tails) with a bounded number of centroids.

Scale function: k1, ``k(q) = (2*compression/pi) * arcsin(sqrt(q))``, which
runs from 0 to ``2*compression``; a centroid may cover at most one unit of k
(band edges ``q_j = (1 - cos(pi*j/(2*compression))) / 2``). k1 makes
centroids small where ``q(1-q)`` is small, so both tails stay sharp (the
outermost centroid holds ~6e-5 of the mass at compression 100: it is a
singleton for the first ~16,000 samples), and wide around the median, where a
rank error of 1e-3 costs a ranking nothing. Unlike k2/k3, k1 does not depend
on the total count, so every digest has the same bands and merging is plain
concatenation plus one compression pass.

Compression: following the usual merging-digest convention (Dunning's
MergingDigest keeps up to ~2x compression centroids), k1 spans
``2*compression`` units, and since every item is assigned to the band that
holds its mid-rank there is at most one centroid per unit: at most 200
centroids at the default of 100, 12 bytes each on the wire (float64 mean +
uint32 weight), <= 2.4 KB. That is the smallest setting that keeps the rank
error at P99/P99.9 under 1e-4 on lognormal and Pareto data (with 100 units
it is ~2e-4, see bench/README.md): interpolation error shrinks roughly with
the square of a centroid's width, so doubling the units buys ~3x accuracy for
1.2 KB.

Insertion is buffered: values accumulate (a Python list for ``add``, numpy
chunks for ``add_batch``) and are merged in one vectorised pass. Large batches
use a two-level pass: the batch is cut into rows of ``_ROW`` values, rows are
sorted in one 2-D ``np.sort`` (cheap: short rows, cache-resident), each row is
reduced to ``_ROW_BANDS_FACTOR * compression`` centroids with a precomputed
``np.add.reduceat`` layout, and those centroids are merged with the digest in
one final pass. That keeps a million-value batch well under 100 ns per value.

Small inputs are exact: while every centroid is a single value, ``quantile``
interpolates exactly like ``numpy.quantile`` (method "linear") and ``cdf`` is
the empirical CDF. With heavier centroids it uses Dunning's interpolation
(half of a centroid's weight on either side of its mean, singletons as point
masses, ``min``/``max`` pinned at the ends).

An empty digest answers ``None`` ("no data"), never NaN. Non-finite values are
rejected with ``ValueError`` so one bad sample cannot poison a window.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np

__all__ = ["FORMAT_VERSION", "TDigest"]

#: Version byte of the serialised form; bump on any layout change.
FORMAT_VERSION = 1
_MAGIC = b"TD"
# magic, version, flags, compression, count, min, max, n_centroids
_HEADER = struct.Struct("<2sBBdQddI")
_FLAG_WIDE_WEIGHTS = 0x01  # weights stored as uint64 instead of uint32

_MIN_COMPRESSION = 10.0
_MAX_COMPRESSION = 100_000.0
#: Values buffered before a merge pass (for ``add``); bounds memory per digest.
_BUFFER_FACTOR = 8
_MIN_BUFFER = 512
#: Batch rows for the two-level pass, and how much finer than the digest the
#: per-row centroids are (finer rows cost a little speed, buy accuracy).
_ROW = 4096
_ROW_BANDS_FACTOR = 4


@lru_cache(maxsize=64)
def _band_edges(bands: int) -> np.ndarray:
    """Quantile edges of the k1 bands: ``q_j = (1 - cos(pi*j/bands)) / 2``, j = 0..bands."""
    edges = (1.0 - np.cos(np.pi * np.arange(bands + 1) / bands)) / 2.0
    edges[0], edges[-1] = 0.0, 1.0
    edges.flags.writeable = False
    return edges


@lru_cache(maxsize=64)
def _row_layout(row: int, bands: int) -> tuple[np.ndarray, np.ndarray]:
    """Group starts and group sizes reducing one sorted row of unit weights to k1 bands."""
    mids = np.arange(row, dtype=np.float64) + 0.5
    band = np.searchsorted(_band_edges(bands) * row, mids, side="right")
    starts = np.concatenate(([0], np.flatnonzero(band[1:] != band[:-1]) + 1))
    sizes = np.diff(np.append(starts, row)).astype(np.float64)
    starts.flags.writeable = False
    sizes.flags.writeable = False
    return starts, sizes


_accumulate = np.add.accumulate


@lru_cache(maxsize=8)
def _positions(n: int) -> np.ndarray:
    """0..n-1, read-only (a digest has at most ~2x compression centroids)."""
    out = np.arange(n)
    out.flags.writeable = False
    return out


def _compress(means: np.ndarray, weights: np.ndarray, bands: int) -> tuple[np.ndarray, np.ndarray]:
    """One merge pass over items sorted by mean: at most one centroid per k1 band.

    Each item goes to the band holding its mid-rank, so a group never spans
    more than one band plus half of its end items; contiguous runs of equal
    band become one centroid (weighted mean).
    """
    # Array methods and ufuncs, not the ``np.*`` wrappers: the same operations
    # (cumsum is add.accumulate), without ~1-2 µs of Python per call; this runs
    # for every ~800 values a digest takes (``_flush``), on the serving loop.
    cum = _accumulate(weights)
    mids = cum - 0.5 * weights
    # First item of each band (a few hundred lookups, cheaper than banding every item).
    firsts = mids.searchsorted(_band_edges(bands)[1:-1] * cum[-1], side="left")
    firsts = firsts[(firsts > 0) & (firsts < means.size)]
    # ``firsts`` is sorted and positive: keep the first of each run of equal ones.
    keep = np.empty(firsts.size, dtype=bool)
    keep[:1] = True
    np.greater(firsts[1:], firsts[:-1], out=keep[1:])
    starts = np.concatenate(((0,), firsts[keep]))
    if starts.size == means.size:
        return means, weights
    new_w = np.add.reduceat(weights, starts)
    new_m = np.add.reduceat(means * weights, starts) / new_w
    # Rounding may put a weighted mean one ulp out of order; keep means sorted.
    np.maximum.accumulate(new_m, out=new_m)
    return new_m, new_w


def check_finite(values: Sequence[float]) -> None:
    """ValueError naming the first non-finite value, as ``add`` raises it.

    One C-speed ``sum`` first: a NaN or an infinity makes the sum non-finite,
    so a finite sum clears the whole list (a sum that overflowed is checked
    value by value, and passes).
    """
    if -math.inf < sum(values) < math.inf:
        return
    for value in values:
        if not -math.inf < value < math.inf:
            raise ValueError(f"t-digest values must be finite, got {value!r}")


class TDigest:
    """Mergeable, serialisable quantile sketch (see the module docstring for the why).

    Not thread-safe; callers serialise access (the stats store holds a lock).
    """

    __slots__ = (
        "_bands",
        "_buf",
        "_buffer_limit",
        "_chunked",
        "_chunks",
        "_compression",
        "_count",
        "_knots",
        "_max",
        "_means",
        "_min",
        "_weights",
    )

    def __init__(self, compression: float = 100.0) -> None:
        if not (_MIN_COMPRESSION <= compression <= _MAX_COMPRESSION):
            raise ValueError(
                f"compression must be in [{_MIN_COMPRESSION:g}, {_MAX_COMPRESSION:g}],"
                f" got {compression!r}"
            )
        self._compression = float(compression)
        self._bands = round(2 * compression)
        self._means = np.empty(0, dtype=np.float64)
        self._weights = np.empty(0, dtype=np.float64)
        self._buf: list[float] = []
        self._chunks: list[np.ndarray] = []
        self._chunked = 0
        self._buffer_limit = max(_MIN_BUFFER, int(_BUFFER_FACTOR * compression))
        self._count = 0
        self._min = math.inf
        self._max = -math.inf
        self._knots: tuple[np.ndarray, np.ndarray, bool] | None = None

    # ------------------------------------------------------------------ input

    def add(self, value: float) -> None:
        """Record one value; O(1) amortised (buffered, merged in batches)."""
        if not -math.inf < value < math.inf:
            raise ValueError(f"t-digest values must be finite, got {value!r}")
        buf = self._buf
        buf.append(value)
        if len(buf) >= self._buffer_limit:
            self._flush()

    def add_many(self, values: Sequence[float], *, checked: bool = False) -> None:
        """``add`` each value in order, with the same buffer flushes (so the same digest).

        For the ingestion path, where a batch brings a few values per bucket:
        one call and one list extend instead of one call per value. Not
        ``add_batch``: a numpy array per handful of values costs more than the
        values, and its flush points differ from ``add``'s. ``checked``: the
        caller has already refused non-finite values (``check_finite``), as the
        stats store does once for the three rings it adds them to.
        """
        if not checked:
            check_finite(values)
        limit, start = self._buffer_limit, 0
        while start < len(values):
            buf = self._buf  # a flush replaces the list
            room = max(1, limit - len(buf))
            buf.extend(values[start : start + room])
            start += room
            if len(buf) >= limit:
                self._flush()

    def add_batch(self, values: np.ndarray | Sequence[float]) -> None:
        """Record many values in one vectorised pass (the fast path)."""
        arr = np.asarray(values, dtype=np.float64).ravel()
        if arr.size == 0:
            return
        if not np.isfinite(arr).all():
            raise ValueError("t-digest values must be finite; batch contains NaN or inf")
        if arr.size >= _ROW:
            self._flush(arr)
            return
        self._chunks.append(arr)
        self._chunked += int(arr.size)
        self._knots = None
        if self._chunked + len(self._buf) >= self._buffer_limit:
            self._flush()

    def merge(self, other: TDigest) -> None:
        """Fold ``other`` into this digest in place (``other`` is not changed logically)."""
        if other is self:
            other = other.copy()
        other._flush()
        if other._count == 0:
            return
        self._flush()
        self._absorb([other])

    @classmethod
    def merged(cls, digests: Iterable[TDigest], compression: float | None = None) -> TDigest:
        """A new digest holding all of ``digests``, in one merge pass.

        ``compression`` defaults to the first digest's (or 100 with no digests).
        """
        parts = list(digests)
        if compression is None:
            compression = parts[0]._compression if parts else 100.0
        out = cls(compression)
        for d in parts:
            d._flush()
        out._absorb([d for d in parts if d._count])
        return out

    def copy(self) -> TDigest:
        """An independent copy."""
        self._flush()
        out = TDigest(self._compression)
        out._means, out._weights = self._means, self._weights  # arrays are never mutated
        out._count, out._min, out._max = self._count, self._min, self._max
        return out

    # ---------------------------------------------------------------- queries

    @property
    def compression(self) -> float:
        """The compression parameter; the digest keeps at most ``2 * compression`` centroids."""
        return self._compression

    @property
    def count(self) -> int:
        """Exactly how many values were inserted (including merged digests)."""
        return self._count + len(self._buf) + self._chunked

    @property
    def min(self) -> float | None:
        """Smallest value seen, or None when empty."""
        self._flush()
        return self._min if self._count else None

    @property
    def max(self) -> float | None:
        """Largest value seen, or None when empty."""
        self._flush()
        return self._max if self._count else None

    @property
    def centroid_count(self) -> int:
        """Number of centroids after merging the buffer (memory/wire size driver)."""
        self._flush()
        return int(self._means.size)

    def quantile(self, q: float) -> float | None:
        """Estimated q-quantile (q in [0, 1]), or None when the digest is empty."""
        out = self.quantiles((q,))
        return None if out is None else out[0]

    def quantiles(self, qs: Iterable[float]) -> list[float] | None:
        """Estimated quantiles for each q in ``qs``, or None when the digest is empty."""
        qa = np.asarray(list(qs) if not isinstance(qs, np.ndarray) else qs, dtype=np.float64)
        if qa.size and not ((qa >= 0.0) & (qa <= 1.0)).all():
            raise ValueError(f"quantiles must be in [0, 1], got {qa.tolist()!r}")
        xs, ys, exact = self._interpolation_knots()
        if self._count == 0:
            return None
        index = qa * (self._count - 1 if exact else self._count)
        vals = np.interp(index, xs, ys)
        return np.clip(vals, self._min, self._max).tolist()

    def cdf(self, x: float) -> float | None:
        """Estimated fraction of values <= x, or None when the digest is empty."""
        if math.isnan(x):
            raise ValueError("cdf of NaN is undefined")
        self._flush()
        if self._count == 0:
            return None
        if x < self._min:
            return 0.0
        if x >= self._max:
            return 1.0
        xs, ys, exact = self._interpolation_knots()
        if exact:
            return float(np.searchsorted(self._means, x, side="right")) / self._count
        return float(np.interp(x, ys, xs)) / self._count

    # ---------------------------------------------------------- serialisation

    def to_bytes(self) -> bytes:
        """Compact versioned form: 37-byte header, then float64 means and uint32 weights."""
        self._flush()
        n = int(self._means.size)
        wide = n > 0 and float(self._weights.max()) >= 2.0**32
        flags = _FLAG_WIDE_WEIGHTS if wide else 0
        lo, hi = (self._min, self._max) if self._count else (0.0, 0.0)
        header = _HEADER.pack(
            _MAGIC, FORMAT_VERSION, flags, self._compression, self._count, lo, hi, n
        )
        wdtype = "<u8" if wide else "<u4"
        return b"".join(
            (header, self._means.astype("<f8").tobytes(), self._weights.astype(wdtype).tobytes())
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> TDigest:
        """Inverse of ``to_bytes``; ``ValueError`` on truncated, corrupt or unknown input."""
        buf = bytes(data)
        if len(buf) < _HEADER.size:
            raise ValueError(f"t-digest bytes too short: {len(buf)} < header {_HEADER.size}")
        magic, version, flags, compression, count, lo, hi, n = _HEADER.unpack_from(buf)
        if magic != _MAGIC:
            raise ValueError(f"not a t-digest: bad magic {magic!r}")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"unsupported t-digest format version {version} (know {FORMAT_VERSION})"
            )
        if flags & ~_FLAG_WIDE_WEIGHTS:
            raise ValueError(f"unknown t-digest flags 0x{flags:02x}")
        wsize = 8 if flags & _FLAG_WIDE_WEIGHTS else 4
        expected = _HEADER.size + n * (8 + wsize)
        if len(buf) != expected:
            raise ValueError(
                f"t-digest bytes length {len(buf)} != expected {expected} for {n} centroids"
            )
        if not (_MIN_COMPRESSION <= compression <= _MAX_COMPRESSION):
            raise ValueError(f"t-digest compression out of range: {compression!r}")
        means = np.frombuffer(buf, "<f8", n, _HEADER.size).astype(np.float64)
        weights = np.frombuffer(buf, "<u8" if wsize == 8 else "<u4", n, _HEADER.size + 8 * n)
        weights = weights.astype(np.float64)
        _validate(count, lo, hi, means, weights)
        out = cls(compression)
        out._means, out._weights, out._count = means, weights, int(count)
        if count:
            out._min, out._max = float(lo), float(hi)
        return out

    def __repr__(self) -> str:
        return (
            f"TDigest(compression={self._compression:g}, count={self.count},"
            f" centroids={self._means.size}+{len(self._buf) + self._chunked} buffered)"
        )

    # ---------------------------------------------------------------- private

    def _flush(self, extra: np.ndarray | None = None) -> None:
        """Merge buffered values (and ``extra``) into the centroids."""
        pending = self._chunks
        if self._buf:
            pending.append(np.asarray(self._buf, dtype=np.float64))
            self._buf = []
        if extra is not None:
            pending.append(extra)
        if not pending:
            return
        values = pending[0] if len(pending) == 1 else np.concatenate(pending)
        self._count += int(values.size)
        self._chunks = []
        self._chunked = 0
        merge_sorted = values.size < 2 * _ROW and values.all()  # no rows, no zero
        if merge_sorted:
            values = np.sort(values)
            lo, hi = values[0], values[-1]
        else:
            lo, hi = values.min(), values.max()
        self._min = min(self._min, float(lo))
        self._max = max(self._max, float(hi))
        if merge_sorted:
            self._merge_sorted(values)
            return
        bands = self._bands
        parts_m, parts_w = [self._means], [self._weights]
        rows = values.size // _ROW if values.size >= 2 * _ROW else 0
        if rows:
            head = np.sort(values[: rows * _ROW].reshape(rows, _ROW), axis=1)
            starts, sizes = _row_layout(_ROW, _ROW_BANDS_FACTOR * bands)
            parts_m.append((np.add.reduceat(head, starts, axis=1) / sizes).ravel())
            parts_w.append(np.tile(sizes, rows))
            values = values[rows * _ROW :]
        parts_m.append(values)
        parts_w.append(np.ones(values.size))
        self._set_compressed(np.concatenate(parts_m), np.concatenate(parts_w))

    def _absorb(self, others: list[TDigest]) -> None:
        """Merge flushed digests' centroids, counts and extremes into this flushed one."""
        if not others:
            return
        means = np.concatenate([self._means, *(d._means for d in others)])
        weights = np.concatenate([self._weights, *(d._weights for d in others)])
        self._count += sum(d._count for d in others)
        self._min = min(self._min, *(d._min for d in others))
        self._max = max(self._max, *(d._max for d in others))
        self._knots = None
        self._set_compressed(means, weights)

    def _merge_sorted(self, values: np.ndarray) -> None:
        """``_set_compressed`` of the centroids followed by ``values`` (sorted, no zero).

        Why not that call: its stable argsort of the concatenation was the
        largest step of a flush (ingestion flushes each bucket digest every
        ~800 values, on the serving loop). The centroids are sorted already,
        so the values are sorted alone (a quicker, unstable sort) and the
        centroids slotted in where the stable sort puts them: before the
        values equal to them, in their own order. Equal values are the same
        float, so the order among them cannot show; zeros could (-0.0 and 0.0
        compare equal), hence the caller sends values with a zero the old way.
        The result is the same arrays, bit for bit (tests/sketches/test_tdigest.py).
        """
        means, weights = self._means, self._weights
        if means.size:
            n = means.size + values.size
            at = values.searchsorted(means, side="left")
            at += _positions(means.size)
            merged_m = np.empty(n)
            merged_w = np.ones(n)
            is_value = np.ones(n, dtype=bool)
            is_value[at] = False
            merged_m[at] = means
            merged_m[is_value] = values
            merged_w[at] = weights
        else:
            merged_m, merged_w = values, np.ones(values.size)
        self._set_compressed(merged_m, merged_w, ordered=True)

    def _set_compressed(
        self, means: np.ndarray, weights: np.ndarray, ordered: bool = False
    ) -> None:
        """Compress ``means``/``weights`` into the centroids (``ordered``: already sorted)."""
        if not ordered:
            order = np.argsort(means, kind="stable")  # timsort: inputs are sorted runs
            means, weights = means[order], weights[order]
        self._means, self._weights = _compress(means, weights, self._bands)
        self._knots = None

    def _interpolation_knots(self) -> tuple[np.ndarray, np.ndarray, bool]:
        """(rank positions, values, exact) describing the piecewise-linear inverse CDF."""
        self._flush()
        if self._knots is None:
            self._knots = _knots(self._means, self._weights, self._min, self._max, self._count)
        return self._knots


def _knots(
    means: np.ndarray, weights: np.ndarray, lo: float, hi: float, count: int
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Knots of the rank -> value map.

    All singletons: ranks 0..n-1 against the sorted values (numpy "linear").
    Otherwise Dunning's scheme: a centroid's mean sits at its mid-rank, a
    singleton is a point mass covering +-0.5 around it, and the first/last
    unit of rank is pinned to min/max.
    """
    if means.size == count:
        return np.arange(count, dtype=np.float64), means, True
    centers = np.cumsum(weights) - 0.5 * weights
    single = weights == 1.0
    xs = np.repeat(centers, np.where(single, 2, 1))
    ys = np.repeat(means, np.where(single, 2, 1))
    # For each singleton, its two knots are centre-0.5 and centre+0.5.
    first = np.cumsum(np.where(single, 2, 1)) - np.where(single, 2, 1)
    xs[first[single]] -= 0.5
    xs[first[single] + 1] += 0.5
    head_x, head_y = ([0.0, 1.0], [lo, lo]) if weights[0] > 1.0 else ([], [])
    tail_x, tail_y = ([count - 1.0, float(count)], [hi, hi]) if weights[-1] > 1.0 else ([], [])
    xs = np.concatenate((head_x, xs, tail_x))
    ys = np.concatenate((head_y, ys, tail_y))
    return xs, ys, False


def _validate(count: int, lo: float, hi: float, means: np.ndarray, weights: np.ndarray) -> None:
    """Reject deserialised state that would make quantiles meaningless."""
    if means.size == 0:
        if count:
            raise ValueError(f"t-digest claims count {count} but has no centroids")
        return
    if not (np.isfinite(means).all() and math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("t-digest contains non-finite means or bounds")
    if (weights <= 0).any():
        raise ValueError("t-digest contains a centroid with zero weight")
    if int(weights.sum()) != count:
        raise ValueError(f"t-digest weights sum to {int(weights.sum())}, header says {count}")
    if (np.diff(means) < 0).any():
        raise ValueError("t-digest centroids are not sorted by mean")
    if not (lo <= means[0] and means[-1] <= hi):
        raise ValueError("t-digest centroid means lie outside [min, max]")
