"""Deterministic uniform sampling without replacement (seeded bottom-k).

Every item gets a 64-bit key from a keyed hash of its uid and the seed; the
sample is the n items with the smallest keys. That is a uniform sample without
replacement, it merges across workers (``Top`` is a CombineFn), needs O(n)
memory per worker, and is the same on every runner. Beam's
``Sample.FixedSizeGlobally`` draws from ``random`` and cannot be seeded.
Keys also give a stable total order, which the writer uses for row order.
"""
import hashlib
import math
from typing import NamedTuple, Optional

import apache_beam as beam

from transforms.items import ImageRef, order_key


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
        self._n, self._seed = n, seed
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
            | "BottomK" >> beam.combiners.Top.Of(self._n, key=order_key, reverse=True)
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


def _last_kept(keys):
    return keys[-1] if keys else None


def _within(element, last_key, item_of):
    return last_key is not None and order_key(item_of(element)) <= last_key


def _within_group(element, last_keys, item_of, group_of):
    return order_key(item_of(element)) <= last_keys[group_of(item_of(element))]


class _KeepFirst(beam.PTransform):
    """Keep the ``k`` elements with the smallest keys, overall or per group.

    The shared logic of ``KeepFirstN`` and ``KeepFirstPerLabel``: the k
    smallest order keys (a ``Top`` combine: O(k) memory per worker), the
    largest of them as a singleton/dict side input, and a filter by it.
    ``item_of`` maps an element to its ImageRef; ``group_of`` an ImageRef to
    its group (None: one group).
    """

    def __init__(self, k: int, item_of=lambda e: e, group_of=None):
        super().__init__()
        self._k, self._item_of, self._group_of = k, item_of, group_of
        self.kept_keys = None   # overall cut: the PCollection of the k kept keys

    def expand(self, elements):
        item_of, group_of = self._item_of, self._group_of
        if group_of is None:
            self.kept_keys = (elements
                              | "OrderKeys" >> beam.Map(lambda e: order_key(item_of(e)))
                              | "FirstNKeys" >> beam.combiners.Top.Of(self._k, reverse=True))
            last = self.kept_keys | "LastKept" >> beam.Map(_last_kept)
            return elements | "KeepFirstN" >> beam.Filter(
                _within, beam.pvalue.AsSingleton(last), item_of)
        cut = (elements
               | "LabelKeys" >> beam.Map(
                   lambda e: (group_of(item_of(e)), order_key(item_of(e))))
               | "FirstKPerLabel" >> beam.combiners.Top.PerKey(self._k, reverse=True)
               | "LastKeptPerLabel" >> beam.Map(lambda kv: (kv[0], _last_kept(kv[1]))))
        return elements | "WithinLabelQuota" >> beam.Filter(
            _within_group, beam.pvalue.AsDict(cut), item_of, group_of)


class KeepFirstN(_KeepFirst):
    """Keep the ``n`` elements with the smallest keys (the sample's order).

    The sample holds a margin beyond N so that failed images do not shrink
    the output; this keeps exactly the first N that got this far, before
    paying for inference. After expansion ``kept_keys`` is the PCollection
    of the one list of kept keys (its length: how many pass, known before
    the first of them does).

        first = thumbnails | KeepFirstN(1000, item_of=lambda t: t.item)
    """

    def __init__(self, n: int, item_of=lambda e: e):
        super().__init__(n, item_of=item_of)


class KeepFirstPerLabel(_KeepFirst):
    """Keep, per label, the ``k`` elements with the smallest keys.

    Applied after decoding, so a label whose sampled images partly failed
    still gets its ``k`` from the margin sampled beyond it. ``item_of`` maps
    an element to its ImageRef.

        per_label = thumbnails | KeepFirstPerLabel(50, label_index=0, item_of=lambda t: t.item)
    """

    def __init__(self, k: int, label_index: int, item_of=lambda e: e):
        super().__init__(k, item_of=item_of, group_of=_LabelOf(label_index))


class _LabelOf:
    """Picklable ``item -> item.metadata[label_index]``."""

    def __init__(self, label_index: int):
        self._index = label_index

    def __call__(self, item: ImageRef) -> str:
        return _label_of(item, self._index)
