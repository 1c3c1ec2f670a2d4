"""What beam-projector owns in a logdir: the manifest, and refusing what it did not write.

``.beam-projector-manifest.json`` lists the root files and ``data-<digest>``
folders the tool wrote; a run replaces or deletes only those, and refuses
before any work to overwrite a file of the same name it did not write.
"""
import json
from typing import List, Optional, Sequence

from apache_beam.io.filesystems import FileSystems

from beam_projector.transforms import projector
from beam_projector.transforms.files import join, read_text
from beam_projector.transforms.write.layout import (
    CONFIG_NAME,
    DATA_FOLDER,
    MANIFEST_NAME,
    ROOT_FILES,
    TEMP_TAG,
)


class OwnershipError(ValueError):
    """The logdir holds a file beam-projector did not write where a run would write."""


def referenced_data_dir(config_text: Optional[str]) -> Optional[str]:
    """The ``data-<digest>`` folder a config's first embedding reads its
    metadata from, read through the proto; None when there is none."""
    if not config_text:
        return None
    try:
        config = projector.parse_projector_config(config_text)
    except Exception:  # noqa: BLE001 - text_format.ParseError: not one of our configs
        return None
    for embedding in config.embeddings[:1]:
        folder = embedding.metadata_path.split("/", 1)[0]
        if "/" in embedding.metadata_path and DATA_FOLDER.match(folder):
            return folder
    return None


def read_manifest(out: str) -> dict:
    """The logdir's manifest: {"files", "data", "pending", "exists"}.

    Only names the tool itself could have written survive validation (known
    root files, ``data-<16 hex>`` folders, alphanumeric temp tags), so an
    edited manifest can never make a run delete anything else.
    """
    path = join(out, MANIFEST_NAME)
    try:
        text = read_text(path)
    except Exception as e:  # noqa: BLE001
        raise OwnershipError(f"cannot read {path}: {e}") from None
    if text is None:
        return {"files": [], "data": [], "pending": [], "exists": False}
    try:
        raw = json.loads(text)
        files, data = list(raw["files"]), list(raw["data"])
        pending = list(raw.get("pending", []))
    except (ValueError, KeyError, TypeError):
        raise OwnershipError(f"{path} is not a beam-projector manifest; move it away or "
                             "write to another --output") from None
    return {"files": sorted({f for f in files if f in ROOT_FILES}),
            "data": sorted({d for d in data if isinstance(d, str) and DATA_FOLDER.match(d)}),
            "pending": sorted({t for t in pending if isinstance(t, str) and TEMP_TAG.match(t)}),
            "exists": True}


def foreign_files(out: str, names: Sequence[str], manifest: dict) -> List[str]:
    """Those of ``names`` present in ``out`` that the manifest does not list."""
    owned = set(manifest["files"])
    return [n for n in names if n not in owned and FileSystems.exists(join(out, n))]


def foreign_message(out: str, foreign: Sequence[str], manifest: dict) -> str:
    msg = (f"--output {out} already holds {', '.join(foreign)}, which beam-projector did "
           f"not write and never replaces; write to a sub-folder instead, e.g. --output "
           f"{join(out, 'projector')} (TensorBoard shows it as its own run)")
    if CONFIG_NAME in foreign and not manifest["exists"]:
        try:
            legacy = referenced_data_dir(read_text(join(out, CONFIG_NAME)))
        except Exception:  # noqa: BLE001 - the hint is optional
            legacy = None
        if legacy and DATA_FOLDER.match(legacy):
            msg += (f"; if an earlier beam-projector version wrote it, delete {CONFIG_NAME} "
                    f"and {legacy}/ to let this version take the folder over")
    return msg


def check_output_owned(out: str, names: Sequence[str]) -> None:
    """Raise OwnershipError when a root file this run would write exists and
    beam-projector did not write it (preflight: before any work)."""
    manifest = read_manifest(out)
    foreign = foreign_files(out, names, manifest)
    if foreign:
        raise OwnershipError(foreign_message(out, foreign, manifest))
