"""The one ordered stage that writes and publishes the projector logdir.

Everything meets here, sorted by the sample key, so tensor row i, metadata row
i and sprite tile i are the same image on every runner. Assets are written to
a fresh content-addressed folder (``data-<digest>/``) that nothing references
yet; the config is then replaced in one rename. A run that fails or is killed
before that rename leaves the previous logdir exactly as TensorBoard knew it.
"""
import collections
import hashlib
import logging
import posixpath
import re
from typing import List, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from transforms import preview, projector, standalone
from transforms.items import Embedded, ErrorRow, order_key

LOG = logging.getLogger(__name__)
CONFIG_NAME = "projector_config.pbtxt"
ERRORS_NAME = "errors.tsv"
SUSPECTS_NAME = "suspects.tsv"
DATA_PREFIX = "data-"
METADATA_NAME = "metadata.tsv"
SPRITE_NAME = "sprite.png"
PREVIEW_NAME = "preview.png"
TENSOR_FORMATS = ("tsv", "binary")
# Errors found while reading the input list (a CSV row without a path) are
# reported, but are not sampled items, so they do not count toward
# --max_error_fraction.
INPUT_STAGE = "read"
EMBED_STAGE = "embed"


class TooManyErrors(RuntimeError):
    """More sampled items failed than --max_error_fraction allows."""


class WriterConfig(NamedTuple):
    output: str
    columns: Tuple[str, ...]
    tensor_names: Tuple[str, ...]
    tile: int
    max_items: int
    max_error_fraction: float = 0.1
    tensor_format: str = "tsv"
    preview: bool = True        # preview.png at the root
    standalone: bool = False    # .bytes tensors + projector_config.json + index.html
    label_column: str = ""      # the column suspects.tsv reads labels from


def join(base: str, *parts: str) -> str:
    return FileSystems.join(base, *parts)


def write_bytes(path: str, data: bytes) -> None:
    with FileSystems.create(path, mime_type="application/octet-stream",
                            compression_type="uncompressed") as f:
        f.write(data)


def read_text(path: str) -> Optional[str]:
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path, compression_type="uncompressed") as f:
        return f.read().decode("utf-8")


def replace_file(path: str, data: bytes, tag: str) -> None:
    """Write beside ``path`` then rename over it: readers see old or new, never half."""
    tmp = path + f".tmp-{tag}"
    write_bytes(tmp, data)
    if FileSystems.exists(path):
        # LocalFileSystem.rename refuses to overwrite on some platforms; GCS
        # rename is copy+delete either way.
        try:
            FileSystems.rename([tmp], [path])
            return
        except Exception:  # noqa: BLE001
            FileSystems.delete([path])
    FileSystems.rename([tmp], [path])


def errors_tsv(rows: Sequence[ErrorRow]) -> bytes:
    lines = ["input\tstage\treason"]
    for r in rows:
        lines.append("\t".join(projector.escape_metadata_value(v) for v in (r.ref, r.stage, r.reason)))
    return ("\n".join(lines) + "\n").encode("utf-8")


SUSPECT_HEADER = ("kind", "rank", "image", "label", "score", "reason")


def suspects_tsv(columns: Sequence[str], rows: Sequence[Sequence[str]],
                 label_column: str = "") -> Tuple[Optional[bytes], dict]:
    """suspects.tsv from the kept rows' neighbour columns, and its counts.

    Top-down: likely mislabelled items (their neighbours' majority label is
    another; lowest agreement first, then nearest), the most isolated items
    (largest K-th neighbour distance), then duplicate groups (the first item
    in output order, then its copies). None when the columns are absent.
    """
    col = {c: i for i, c in enumerate(columns)}
    if "nn_distance" not in col or "duplicate_of" not in col:
        return None, {}
    out = ["\t".join(SUSPECT_HEADER)]

    def emit(kind, rank, row, score, reason):
        label = row[col[label_column]] if label_column in col else ""
        out.append("\t".join(projector.escape_metadata_value(v) for v in
                             (kind, rank, row[0], label, score, reason)))

    counts = {"suspects_mislabelled": 0, "suspects_isolated": 0,
              "duplicate_groups": 0, "duplicates": 0}
    if label_column in col and "nn_label_agreement" in col:
        lab, agr, maj = col[label_column], col["nn_label_agreement"], col["nn_majority_label"]
        dist = col["nn_distance"]
        flagged = [i for i, r in enumerate(rows) if r[agr] and r[maj] != r[lab]]
        flagged.sort(key=lambda i: (float(rows[i][agr]), float(rows[i][dist]), i))
        for rank, i in enumerate(flagged, 1):
            r = rows[i]
            emit("mislabelled", rank, r, r[agr],
                 f"label {r[lab]!r} is carried by {float(r[agr]):.0%} of its nearest "
                 f"neighbours; most of them are {r[maj]!r}")
        counts["suspects_mislabelled"] = len(flagged)
    dist = col["nn_distance"]
    scored = [i for i, r in enumerate(rows) if r[dist]]
    isolated = sorted(scored, key=lambda i: (-float(rows[i][dist]), i))
    isolated = isolated[:max(10, -(-len(scored) // 100))]
    for rank, i in enumerate(isolated, 1):
        r = rows[i]
        emit("isolated", rank, r, r[dist],
             f"K-th nearest neighbour at cosine distance {r[dist]} "
             f"(rank {rank} of {len(scored)} by isolation)")
    counts["suspects_isolated"] = len(isolated)
    # duplicate groups: union of the duplicate_of links, in output order
    first_row = {}
    for i, r in enumerate(rows):
        first_row.setdefault(r[0], i)
    parent = list(range(len(rows)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, r in enumerate(rows):
        j = first_row.get(r[col["duplicate_of"]])
        if r[col["duplicate_of"]] and j is not None:
            a, b = root(i), root(j)
            parent[max(a, b)] = min(a, b)
    groups = collections.defaultdict(list)
    for i in range(len(rows)):
        groups[root(i)].append(i)
    groups = [g for _, g in sorted(groups.items()) if len(g) > 1]
    for rank, members in enumerate(groups, 1):
        first = rows[members[0]]
        emit("duplicate", rank, first, len(members),
             f"first of {len(members)} near-identical pictures")
        for i in members[1:]:
            emit("duplicate", rank, rows[i], len(members), f"same picture as {first[0]}")
    counts["duplicate_groups"] = len(groups)
    counts["duplicates"] = sum(len(g) - 1 for g in groups)
    return ("\n".join(out) + "\n").encode("utf-8"), counts


def tensor_file_name(name: str, count: int, fmt: str) -> str:
    ext = "tsv" if fmt == "tsv" else "bytes"
    if count == 1:
        return f"feature_vecs.{ext}"
    return f"feature_vecs-{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.{ext}"


def select_for_publish(embedded: Sequence[Embedded], errors: Sequence[ErrorRow],
                       max_items: int):
    """(kept rows in order, errors that count, errors to report).

    Failures past the last kept key were never needed, so they neither count
    nor appear; input-list errors always appear but never count. The cut is
    the N-th item that decoded (embedded or failed in the model): KeepFirstN
    chose those before inference, and model failures are not backfilled, so
    decode failures beyond that cut were never needed either.
    """
    kept = sorted(embedded, key=lambda e: order_key(e.item))[:max_items]
    decoded = sorted([e.item.key for e in embedded]
                     + [r.key for r in errors if r.stage == EMBED_STAGE])
    last = decoded[max_items - 1] if len(decoded) >= max_items else None
    counted, reported = [], []
    for e in sorted(errors, key=lambda r: (r.key, r.ref, r.stage, r.reason)):
        if e.stage == INPUT_STAGE and e.key == 0:
            reported.append(e)
        elif last is None or e.key <= last:
            counted.append(e)
            reported.append(e)
    return kept, counted, reported


class Assets(NamedTuple):
    files: List[Tuple[str, bytes]]   # (name inside the data folder, bytes)
    tensors: List[Tuple[str, Tuple[int, int], str]]
    digest: str
    tile: int
    # (name, shape, .bytes file) for the standalone projector; empty without --standalone
    standalone_tensors: Sequence[Tuple[str, Tuple[int, int], str]] = ()
    preview_png: Optional[bytes] = None


def build_assets(kept: Sequence[Embedded], cfg: WriterConfig) -> Assets:
    n = len(kept)
    files = []
    tensors = []
    standalone_tensors = []
    matrices = []
    for t, name in enumerate(cfg.tensor_names):
        matrix = np.stack([e.vectors[t] for e in kept]).astype(np.float32)
        fmt = cfg.tensor_format
        data = projector.tensor_binary(matrix) if fmt == "binary" else None
        if data is not None and not projector.binary_tensor_is_readable(data):
            LOG.warning("tensor %s would be misread as text by TensorBoard; writing TSV", name)
            fmt, data = "tsv", None
        if data is None:
            data = projector.tensor_tsv(matrix)
        fname = tensor_file_name(name, len(cfg.tensor_names), fmt)
        files.append((fname, data))
        tensors.append((name, matrix.shape, fname))
        matrices.append(matrix)
        if cfg.standalone:
            # the standalone projector reads float32 only from a .bytes path
            bname = tensor_file_name(name, len(cfg.tensor_names), "binary")
            if bname != fname:
                files.append((bname, projector.tensor_binary(matrix)))
            standalone_tensors.append((name, matrix.shape, bname))
    meta = projector.metadata_tsv(cfg.columns, [e.item.metadata for e in kept]).encode("utf-8")
    files.append((METADATA_NAME, meta))
    _, tile, _ = projector.sprite_geometry(n, cfg.tile)
    sprite = projector.png_bytes(projector.assemble_sprite([e.thumbnail for e in kept], tile))
    files.append((SPRITE_NAME, sprite))
    h = hashlib.sha256()
    for fname, data in files:
        h.update(fname.encode() + b"\0" + hashlib.sha256(data).digest())
    # The preview is a view of these assets, not one TensorBoard reads: it
    # stays out of the digest and goes to the root (see publish).
    png = None
    if cfg.preview:
        png = preview.png_bytes(preview.render_preview(
            [e.thumbnail for e in kept], matrices[0], tile))
    return Assets(files, tensors, h.hexdigest()[:16], tile, standalone_tensors, png)


def _referenced_data_dir(config_text: Optional[str]) -> Optional[str]:
    if not config_text:
        return None
    m = re.search(r'metadata_path: "(data-[0-9a-f]+)/', config_text)
    return m.group(1) if m else None


def publish(assets: Assets, cfg: WriterConfig, reported_errors: Sequence[ErrorRow],
            suspects: Optional[bytes] = None) -> str:
    """Write the data folder, then swap the config in. Returns the config text."""
    out = cfg.output
    folder = DATA_PREFIX + assets.digest
    config_path = join(out, CONFIG_NAME)
    current = _referenced_data_dir(read_text(config_path))
    if current != folder:
        target = join(out, folder)
        if FileSystems.exists(target):  # an orphan of a killed run: maybe partial
            FileSystems.delete([target])
        for fname, data in assets.files:
            write_bytes(join(target, fname), data)
    config = projector.projector_config_text(
        [(name, shape, posixpath.join(folder, path)) for name, shape, path in assets.tensors],
        posixpath.join(folder, METADATA_NAME), posixpath.join(folder, SPRITE_NAME), assets.tile)
    replace_file(config_path, config.encode("utf-8"), assets.digest)
    _publish_extras(assets, out, folder)
    replace_file(join(out, ERRORS_NAME), errors_tsv(reported_errors), assets.digest)
    _publish_suspects(out, suspects, assets.digest)
    _remove_stale(out, keep=folder)
    return config


def _publish_suspects(out: str, suspects: Optional[bytes], tag: str) -> None:
    """suspects.tsv beside errors.tsv; a stale one goes when this run has none."""
    path = join(out, SUSPECTS_NAME)
    if suspects is not None:
        replace_file(path, suspects, tag)
    elif FileSystems.exists(path):
        FileSystems.delete([path])


def _publish_extras(assets: Assets, out: str, folder: str) -> None:
    """preview.png and the standalone export, right after the config swap.

    preview.png sits at the root only, where a bucket listing or an Airflow
    artifact shows it; nothing references it, so it needs no content-addressed
    copy, and writing it after the swap means it never shows data the config
    does not point at yet. A file this run does not produce is removed, so a
    stale preview or a standalone config naming a deleted folder never lingers.
    """
    preview_path = join(out, PREVIEW_NAME)
    if assets.preview_png is not None:
        replace_file(preview_path, assets.preview_png, assets.digest)
    elif FileSystems.exists(preview_path):
        FileSystems.delete([preview_path])
    json_path = join(out, standalone.STANDALONE_CONFIG_NAME)
    index_path = join(out, standalone.INDEX_NAME)
    bundle_path = join(out, standalone.BUNDLE_NAME)
    if assets.standalone_tensors:
        text = standalone.config_json(
            [(name, shape, posixpath.join(folder, path))
             for name, shape, path in assets.standalone_tensors],
            posixpath.join(folder, METADATA_NAME), posixpath.join(folder, SPRITE_NAME), assets.tile)
        replace_file(bundle_path, _projector_bundle(), assets.digest)
        replace_file(index_path, standalone.index_html().encode("utf-8"), assets.digest)
        replace_file(json_path, text.encode("utf-8"), assets.digest)
        return
    stale = [json_path, bundle_path]
    try:
        if standalone.INDEX_MARKER in (read_text(index_path) or ""):
            stale.append(index_path)
    except UnicodeDecodeError:  # not a page this writer produced
        pass
    stale = [p for p in stale if FileSystems.exists(p)]
    if stale:
        FileSystems.delete(stale)


def _projector_bundle() -> bytes:
    """TensorBoard's projector bundle from the installed package: the same
    code as the standalone projector, so the export needs no download."""
    import importlib.resources

    return (importlib.resources.files(standalone.BUNDLE_PACKAGE)
            .joinpath(standalone.BUNDLE_NAME).read_bytes())


def _remove_stale(out: str, keep: str) -> None:
    """Drop data folders no config points at any more, and leftover temp files."""
    # FileSystems.match lists files, never folders, so a folder is found by
    # the files inside it ("data-**" matches at any depth, locally and in
    # object stores). Deleting a local folder path removes it recursively;
    # object stores delete a prefix given with a trailing "/".
    try:
        matches = FileSystems.match([join(out, DATA_PREFIX + "**"), join(out, "*.tmp-*")])
    except Exception:  # noqa: BLE001 - nothing to clean
        return
    stale = set()
    for m in matches:
        for meta in m.metadata_list:
            rel = meta.path[len(out):].lstrip("/")
            top, sep, _ = rel.partition("/")
            if top != keep:
                remote_folder = sep and "://" in out
                stale.add(join(out, top) + ("/" if remote_folder else ""))
    if stale:
        FileSystems.delete(sorted(stale))


class _WriteLogdirFn(beam.DoFn):
    def __init__(self, cfg: WriterConfig):
        self._cfg = cfg

    def process(self, keyed):
        _, tagged = keyed
        embedded = [v for tag, v in tagged if tag == "ok"]
        errors = [v for tag, v in tagged if tag == "err"]
        cfg = self._cfg
        kept, counted, reported = select_for_publish(embedded, errors, cfg.max_items)
        examined = len(kept) + len(counted)
        if not kept or (examined and len(counted) / examined > cfg.max_error_fraction):
            replace_file(join(cfg.output, ERRORS_NAME), errors_tsv(reported), "failed")
            if not kept:
                raise TooManyErrors(
                    f"no image could be embedded ({len(reported)} errors); "
                    f"see {join(cfg.output, ERRORS_NAME)}")
            raise TooManyErrors(
                f"{len(counted)} of {examined} sampled items failed "
                f"({len(counted) / examined:.1%} > --max_error_fraction "
                f"{cfg.max_error_fraction:.1%}); nothing published, "
                f"see {join(cfg.output, ERRORS_NAME)}")
        assets = build_assets(kept, cfg)
        suspects, suspect_counts = suspects_tsv(cfg.columns, [e.item.metadata for e in kept],
                                                cfg.label_column)
        publish(assets, cfg, reported, suspects)
        for name, value in suspect_counts.items():
            beam.metrics.Metrics.counter("projector", name).inc(value)
        written = beam.metrics.Metrics.counter("projector", "written")
        written.inc(len(kept))
        beam.metrics.Metrics.counter("projector", "failed").inc(len(reported))
        yield {"written": len(kept), "failed": len(reported), "digest": assets.digest,
               "tensors": [(n, list(s)) for n, s, _ in assets.tensors], "tile": assets.tile}


class WriteProjectorLogdir(beam.PTransform):
    """(embedded, errors) -> one summary dict, after publishing the logdir."""

    def __init__(self, cfg: WriterConfig):
        super().__init__()
        self._cfg = cfg

    def expand(self, pcolls):
        embedded, errors = pcolls
        ok = embedded | "TagOk" >> beam.Map(lambda e: (None, ("ok", e)))
        bad = errors | "TagErr" >> beam.Map(lambda e: (None, ("err", e)))
        return ((ok, bad)
                | "Together" >> beam.Flatten()
                | "OneStage" >> beam.GroupByKey()
                | "Write" >> beam.ParDo(_WriteLogdirFn(self._cfg)))
