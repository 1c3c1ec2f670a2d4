"""What a stage reads from a user's element, and the dead letter it becomes.

The public stages take dicts or ``beam.Row``s (``image``, ``vector`` and the
metadata fields named in ``columns``), or the ``ImageRef`` records the
sources yield. This module is the one place that reads such an element, so
every stage refuses a malformed one the same way: an ``ElementError`` whose
message is the dead-letter reason, and an ``ErrorRow`` that names the
element by its own fields, so a failed row can be traced back. No Beam here.
"""
import hashlib
from collections.abc import Mapping
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from beam_projector.transforms.records import ErrorRow, ImageRef, capped

# Longest value that can be a path or URI. A longer str is a mistake (most
# often base64 of the bytes), refused with a reason rather than read as a
# file name, and never copied whole into errors.tsv.
MAX_PATH_CHARS = 4096
# How much of any value a dead letter repeats.
MAX_SHOWN_CHARS = 200


class ElementError(ValueError):
    """One element cannot be used; the message is the dead-letter reason."""


def shown(value: Any, limit: int = MAX_SHOWN_CHARS) -> str:
    """``value`` as one bounded, printable line for a message or errors.tsv."""
    return capped(value, limit)


def fields_of(element) -> Mapping:
    """A dict or ``beam.Row`` (or a NamedTuple) as a mapping of its fields.
    Raises ElementError for anything else, naming what it is: fields are
    taken by name, never by position."""
    if isinstance(element, Mapping):
        return element
    as_mapping = getattr(element, "_asdict", None)   # beam.Row, NamedTuples
    if callable(as_mapping):
        return as_mapping()
    raise ElementError(f"expected a dict or beam.Row with named fields, got "
                       f"{type(element).__name__}: {shown(element, 80)}")


def image_source(fields: Mapping, image_field: str) -> Tuple[str, Optional[bytes], str]:
    """(ref, content, uid) of the element's image: encoded bytes, or a path
    or URI read later through Beam's FileSystems. ``uid`` is what the sample
    key and the write order hash: the path's text, or the bytes' digest."""
    if image_field not in fields or fields[image_field] is None:
        raise ElementError(f"no {image_field!r} field; the element has fields: "
                           f"{', '.join(repr(k) for k in fields) or 'none'}")
    image = fields[image_field]
    if isinstance(image, (bytes, bytearray, memoryview)):
        content = bytes(image)
        if not content:
            raise ElementError(f"{image_field!r} is empty (0 bytes)")
        uid = hashlib.blake2b(content, digest_size=16).hexdigest()
        return f"bytes#{uid[:12]}", content, uid
    if isinstance(image, str):
        if len(image) > MAX_PATH_CHARS or "\n" in image or "\x00" in image or not image.strip():
            raise ElementError(
                f"{image_field!r} is a str of {len(image)} characters that cannot be a path or "
                "URI; pass the encoded image as bytes (e.g. base64.b64decode(text)) or a path")
        return image, None, image
    raise ElementError(f"{image_field!r} must be encoded image bytes or a path/URI str, got "
                       f"{type(image).__name__}")


def metadata_of(fields: Mapping, columns: Sequence[str]) -> Tuple[str, ...]:
    """The values of ``columns``, as text, in that order. A column the element
    lacks is an error, not an empty value: a misspelt name would otherwise
    give a column of blanks."""
    missing = [c for c in columns if c not in fields]
    if missing:
        raise ElementError(f"no field {', '.join(repr(c) for c in missing)} for the "
                           f"column(s) asked for; the element has fields: "
                           f"{', '.join(repr(k) for k in fields) or 'none'}")
    return tuple("" if fields[c] is None else str(fields[c]) for c in columns)


def vector_of(value: Any, what: str = "vector") -> np.ndarray:
    """A 1-D float32 vector of at least 2 finite values, or ElementError."""
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ElementError(f"{what} is not numeric: {shown(e, 120)}") from None
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]            # one image's (1, D) model output
    if arr.ndim != 1:
        raise ElementError(f"{what} has shape {arr.shape}; expected one vector (D,)")
    if arr.size < 2:
        raise ElementError(f"{what} has {arr.size} value(s); the projector needs at least 2 "
                           "dimensions")
    if not np.all(np.isfinite(arr)):
        raise ElementError(f"{what} is not finite (NaN or Inf)")
    return arr


def vectors_of(fields: Mapping, vector_field: str,
               names: Optional[Sequence[str]] = None) -> Tuple[Tuple[str, ...], Tuple[np.ndarray, ...]]:
    """(tensor names, vectors) of an element: one vector, named
    ``names[0]`` (default: the field's name), or a mapping of tensor name to
    vector for several tensors (in ``names`` order, else sorted)."""
    if vector_field not in fields or fields[vector_field] is None:
        raise ElementError(f"no {vector_field!r} field; the element has fields: "
                           f"{', '.join(repr(k) for k in fields) or 'none'}")
    value = fields[vector_field]
    if isinstance(value, Mapping):
        keys = tuple(names) if names else tuple(sorted(value))
        missing = [k for k in keys if k not in value]
        if missing or not keys:
            raise ElementError(f"{vector_field!r} lacks tensor(s) "
                               f"{', '.join(repr(k) for k in missing)}; it has "
                               f"{', '.join(repr(k) for k in value) or 'none'}")
        return keys, tuple(vector_of(value[k], f"{vector_field}[{k!r}]") for k in keys)
    return tuple(names or (vector_field,))[:1], (vector_of(value, repr(vector_field)),)


def describe(fields: Optional[Mapping], id_fields: Sequence[str], fallback: str) -> str:
    """How errors.tsv names an element: its identifying fields
    (``id=42, label=cat``), else ``fallback`` (its image path, or
    ``bytes#<digest>``)."""
    if fields is not None:
        named = [f"{k}={shown(fields[k], 80)}" for k in id_fields if k in fields]
        if named:
            return ", ".join(named)
    return shown(fallback)


def dead_letter(element, stage: str, reason: str, id_fields: Sequence[str] = (),
                key: int = 0, fallback: str = "") -> ErrorRow:
    """The ErrorRow of a failed element: ``ref`` names it (its id fields, or
    its image), ``fields`` carries those fields' values, ``reason`` is one
    bounded line."""
    if isinstance(element, ImageRef):
        return ErrorRow(shown(element.ref), stage, shown(reason, 300), element.key)
    try:
        fields = fields_of(element)
    except ElementError:
        fields = None
    if not fallback and fields is not None:
        for name in ("image", "path", "uri"):
            value = fields.get(name)
            if isinstance(value, str):
                fallback = value
                break
            if isinstance(value, (bytes, bytearray, memoryview)):
                fallback = "bytes#" + hashlib.blake2b(bytes(value), digest_size=16).hexdigest()[:12]
                break
    carried: Tuple[Tuple[str, str], ...] = ()
    if fields is not None:
        carried = tuple((k, shown(fields[k])) for k in id_fields if k in fields)
    ref = describe(fields, id_fields, fallback or shown(element, 80))
    return ErrorRow(ref, stage, shown(reason, 300), key, carried)


def as_dict(fields: Mapping) -> Dict[str, Any]:
    """A plain dict copy of an element's fields (the public stages emit dicts)."""
    return dict(fields)


class RefImages:
    """The pipeline's own ``ImageRef`` elements: the image is the ref or the
    content the source read; a dead letter is keyed by the sample key."""

    def source(self, item: ImageRef) -> Tuple[str, Optional[bytes]]:
        return item.ref, item.content

    def error(self, item: ImageRef, stage: str, reason: str) -> ErrorRow:
        return ErrorRow(item.ref, stage, reason, item.key)


class FieldImages:
    """A user's dict or ``beam.Row`` elements: the image is the field
    ``image_field``; a dead letter names the element by ``id_fields``."""

    def __init__(self, image_field: str = "image", id_fields: Sequence[str] = ()):
        self.image_field = image_field
        self.id_fields = tuple(id_fields)

    def source(self, element) -> Tuple[str, Optional[bytes]]:
        ref, content, _ = image_source(fields_of(element), self.image_field)
        return ref, content

    def error(self, element, stage: str, reason: str) -> ErrorRow:
        return dead_letter(element, stage, reason, self.id_fields)
