"""What one write of a logdir decides, handed from the composite to the writer."""
from typing import NamedTuple, Tuple

from beam_projector.transforms.settings import Settings


class WriterConfig(NamedTuple):
    output: str
    columns: Tuple[str, ...]       # metadata columns, the image column first
    tensor_names: Tuple[str, ...]
    settings: Settings             # max_items, tile_size, tensor_format, preview, ...
    run_id: str = ""               # names this run in run_summary.json and its temp files
    options_json: str = ""         # the options used, for run_summary.json
    label_column: str = ""         # the column suspects.tsv reads labels from
    # columns (among ``columns``) that hold a layout's coordinates, the
    # projector's point keys (umap-0, ...): the writer moves them from the
    # metadata into bookmarks.json
    layout_columns: Tuple[str, ...] = ()
