"""Deterministic uniform sampling without replacement (seeded bottom-k).

Every item gets a 64-bit key from a keyed hash of its uid and the seed; the
sample is the n items with the smallest keys. That is a uniform sample without
replacement, it merges across workers (``Top`` is a CombineFn), needs O(n)
memory per worker, and is the same on every runner. Beam's
``Sample.FixedSizeGlobally`` draws from ``random`` and cannot be seeded.
Keys also give a stable total order, which the writer uses for row order.
"""
import collections
import hashlib
import heapq
import math
from typing import NamedTuple, Optional

import apache_beam as beam

from beam_projector.transforms.records import ImageRef, order_key


def sample_key(uid: str, seed: int) -> int:
    """Seeded 64-bit hash of ``uid``: uniform, stable across processes and runs.

    Python's ``hash`` is salted per process, so it would differ between
    workers; blake2b with the seed as key does not.
    """
    h = hashlib.blake2b(uid.encode("utf-8"), digest_size=8,
                        key=str(int(seed)).encode("ascii"))
    return int.from_bytes(h.digest(), "big")


def with_key(item: ImageRef, seed: int) -> ImageRef:
    return item._replace(key=sample_key(item.uid, seed))


def _label_of(item: ImageRef, label_index: int) -> str:
    return item.metadata[label_index]


class SampleItems(beam.PTransform):
    """Keep up to ``n`` items (and at most ``per_label`` per label), by key.

    ``per_label`` applies a per-label bottom-k first; the global bottom-k of
    those is still uniform within each label's quota and deterministic.

        sample = refs | SampleItems(1000, seed=0)
    """

    def __init__(self, n: int, seed: int, per_label: Optional[int] = None,
                 label_index: Optional[int] = None):
        super().__init__()
        self._size, self._seed = n, seed   # n: the sample's size (N and any margin)
        self._per_label, self._label_index = per_label, label_index

    def expand(self, items):
        keyed = items | "AssignSampleKey" >> beam.Map(with_key, self._seed)
        if self._per_label:
            keyed = (
                keyed
                | "ByLabel" >> beam.WithKeys(lambda it, i=self._label_index: _label_of(it, i))
                | "BottomKPerLabel" >> beam.combiners.Top.PerKey(
                    self._per_label, key=order_key, reverse=True)
                | "UnpackPerLabel" >> beam.FlatMap(lambda kv: kv[1]))
        return (
            keyed
            | "BottomK" >> beam.combiners.Top.Of(self._size, key=order_key, reverse=True)
            | "Unpack" >> beam.FlatMap(lambda items: items))


def failure_margin(max_items: int, max_error_fraction: float) -> int:
    """Extra items to sample so that failures up to the allowed fraction do
    not shrink the output below max_items."""
    return int(math.ceil(max_items * max_error_fraction / max(1e-9, 1 - max_error_fraction))) + 1


class SampleSizes(NamedTuple):
    """How many to sample: the total and per-label quotas, each with its margin."""
    total: int                    # max_items + margin
    per_label: Optional[int]      # max_per_label + margin, or None (no per-label cap)


def sample_sizes(max_items: int, max_error_fraction: float,
                 max_per_label: Optional[int] = None) -> SampleSizes:
    """The one place the failure margins are computed: the total and each
    label's quota get the same kind of margin, so failed images do not
    shrink either below what was asked."""
    per_label = (max_per_label + failure_margin(max_per_label, max_error_fraction)
                 if max_per_label else None)
    return SampleSizes(max_items + failure_margin(max_items, max_error_fraction), per_label)


class Cut(NamedTuple):
    """Where a selection ends: keep an element when its order key is at most
    ``last`` and, with a per-label quota, at most its label's ``label_last``.
    ``count`` is how many elements the cut keeps."""
    last: Optional[tuple]                 # None: nothing is kept
    label_last: Optional[dict] = None     # label -> last key kept in it; None: no quota
    count: int = 0


def first_cut(pairs, n: int, per_label: Optional[int] = None) -> Cut:
    """The cut that keeps, of ``(label, order key)`` pairs, the first
    ``per_label`` of each label (when given) and then the first ``n`` of
    those. Pure: the combiner below and the tests use it."""
    if per_label:
        groups = collections.defaultdict(list)
        for label, key in pairs:
            groups[label].append(key)
        kept = {label: heapq.nsmallest(per_label, keys) for label, keys in groups.items()}
        label_last = {label: keys[-1] for label, keys in kept.items()}
        candidates = [k for keys in kept.values() for k in keys]
    else:
        label_last, candidates = None, [key for _, key in pairs]
    first = heapq.nsmallest(n, candidates)
    return Cut(first[-1] if first else None, label_last, len(first))


def within_cut(key, label, cut: Cut) -> bool:
    """Whether the element with order key ``key`` and ``label`` is kept by ``cut``."""
    if cut.last is None or key > cut.last:
        return False
    return cut.label_last is None or key <= cut.label_last.get(label, key)


class FirstCutFn(beam.CombineFn):
    """``(label, order key)`` pairs -> ``first_cut`` of them.

    The accumulator keeps only what can still be kept: the ``per_label``
    smallest keys of each label, or the ``n`` smallest overall (O(n) keys a
    worker, as ``Top`` would), so partial results merge on any runner.
    """

    def __init__(self, n: int, per_label: Optional[int] = None):
        self._keep, self._per_label = n, per_label   # n: how many the cut keeps

    def _limit(self) -> int:
        return self._per_label or self._keep

    def create_accumulator(self):
        return {}   # label (None without a quota) -> keys that may still be kept

    def add_input(self, acc, pair):
        label, key = pair
        keys = acc.setdefault(label if self._per_label else None, [])
        keys.append(key)
        if len(keys) > 2 * self._limit():
            keys[:] = heapq.nsmallest(self._limit(), keys)
        return acc

    def merge_accumulators(self, accs):
        merged = {}
        for acc in accs:
            for label, keys in acc.items():
                merged.setdefault(label, []).extend(keys)
        return {label: heapq.nsmallest(self._limit(), keys) for label, keys in merged.items()}

    def extract_output(self, acc):
        pairs = [(label, key) for label, keys in acc.items() for key in keys]
        return first_cut(pairs, self._keep, self._per_label)


def label_and_key(item: ImageRef, label_of=None):
    """The ``(label, order key)`` pair a cut is computed from."""
    return (label_of(item) if label_of else None), order_key(item)


def cut_without(failed_keys, pairs, n: int, per_label: Optional[int] = None) -> Cut:
    """``first_cut`` of ``pairs`` once the items whose sample key is in
    ``failed_keys`` are left out: the cut a refill is chosen by."""
    return first_cut([(label, key) for label, key in pairs if key[0] not in failed_keys],
                     n, per_label)


def kept_by(element, cut: Cut, item_of=lambda e: e, label_of=None) -> bool:
    item = item_of(element)
    return within_cut(order_key(item), label_of(item) if label_of else None, cut)


class LabelOf:
    """Picklable ``item -> item.metadata[label_index]``."""

    def __init__(self, label_index: int):
        self._index = label_index

    def __call__(self, item: ImageRef) -> str:
        return _label_of(item, self._index)
