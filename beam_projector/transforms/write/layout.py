"""The names of everything a run writes in a logdir, and the order it publishes them."""
import re
from typing import Tuple

from beam_projector.transforms import standalone

CONFIG_NAME = "projector_config.pbtxt"


ERRORS_NAME = "errors.tsv"


SUSPECTS_NAME = "suspects.tsv"


DATA_PREFIX = "data-"


METADATA_NAME = "metadata.tsv"


SPRITE_NAME = "sprite.png"


# The projector's saved views (issue 27), inside the data folder next to the
# tensor: TensorBoard accepts only paths inside the config's folder.
BOOKMARKS_NAME = "bookmarks.json"


PREVIEW_NAME = "preview.png"


TENSOR_FORMATS = ("tsv", "binary")


MANIFEST_NAME = ".beam-projector-manifest.json"


SUMMARY_NAME = "run_summary.json"


# A one-event TensorBoard event file: it makes the logdir a *run*, so a
# projector written to a sub-folder of a training logdir shows up as its own
# run there (TensorBoard lists only folders holding event files, besides the
# root). Fixed wall time: the file is the same on every run.
EVENTS_NAME = "events.out.tfevents.0.beam-projector"


# Every root file a run may write, in the order a publish renames them into
# place: the extras first, the TensorBoard config last, since the config swap
# is what makes a run visible.
ROOT_FILES = (EVENTS_NAME, ERRORS_NAME, SUSPECTS_NAME, standalone.BUNDLE_NAME, standalone.INDEX_NAME, PREVIEW_NAME,
              SUMMARY_NAME, standalone.STANDALONE_CONFIG_NAME, CONFIG_NAME)


# Beam's FileSystems.match and LocalFileSystem.delete read these as a pattern.
GLOB_CHARS = "*?["


DATA_FOLDER = re.compile(r"^data-[0-9a-f]{16}$")


TEMP_TAG = re.compile(r"^[0-9a-zA-Z]{1,64}$")


def root_files(preview_png: bool, standalone_export: bool,
               suspects: bool = False) -> Tuple[str, ...]:
    """The root files one run writes, in publish order."""
    names = {EVENTS_NAME, ERRORS_NAME, SUMMARY_NAME, CONFIG_NAME}
    if suspects:
        names.add(SUSPECTS_NAME)
    if preview_png:
        names.add(PREVIEW_NAME)
    if standalone_export:
        names |= {standalone.BUNDLE_NAME, standalone.INDEX_NAME,
                  standalone.STANDALONE_CONFIG_NAME}
    return tuple(n for n in ROOT_FILES if n in names)


def glob_chars(path: str) -> str:
    """The glob characters in ``path`` (empty when none)."""
    return "".join(c for c in GLOB_CHARS if c in path)


def tensor_file_name(name: str, count: int, fmt: str) -> str:
    ext = "tsv" if fmt == "tsv" else "bytes"
    if count == 1:
        return f"feature_vecs.{ext}"
    return f"feature_vecs-{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.{ext}"
