"""Deterministic uniform sampling without replacement (seeded bottom-k).

Every item gets a 64-bit key from a keyed hash of its uid and the seed; the
sample is the n items with the smallest keys. That is a uniform sample without
replacement, it merges across workers (``Top`` is a CombineFn), needs O(n)
memory per worker, and is the same on every runner. Beam's
``Sample.FixedSizeGlobally`` draws from ``random`` and cannot be seeded.
Keys also give a stable total order, which the writer uses for row order.
"""
import hashlib
from typing import Optional

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


class KeepFirstPerLabel(beam.PTransform):
    """Keep, per label, the ``k`` elements with the smallest keys.

    Applied after decoding, so a label whose sampled images partly failed
    still gets its ``k`` from the margin sampled beyond it. ``item_of`` maps
    an element to its ImageRef.
    """

    def __init__(self, k: int, label_index: int, item_of=lambda e: e):
        super().__init__()
        self._k, self._label_index, self._item_of = k, label_index, item_of

    def expand(self, elements):
        idx, item_of = self._label_index, self._item_of
        cut = (elements
               | "LabelKeys" >> beam.Map(lambda e: (_label_of(item_of(e), idx), order_key(item_of(e))))
               | "FirstKPerLabel" >> beam.combiners.Top.PerKey(self._k, reverse=True)
               | "LastKeptPerLabel" >> beam.Map(lambda kv: (kv[0], kv[1][-1])))
        return elements | "WithinLabelQuota" >> beam.Filter(
            lambda e, last: order_key(item_of(e)) <= last[_label_of(item_of(e), idx)],
            beam.pvalue.AsDict(cut))
