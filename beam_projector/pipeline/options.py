"""Every beam-projector option, declared once.

A ``PipelineOptions`` subclass, so the flags travel with the pipeline to
Dataflow/Flink workers and mix freely with Beam's own flags. ``--help`` is
generated from the same declarations (``format_help``), so it cannot drift.
"""
import argparse

from apache_beam.options.pipeline_options import PipelineOptions

from beam_projector.transforms.images import RESIZE_MODES
from beam_projector.transforms.layout import DEFAULT_LAYOUT, DEFAULT_SAMPLE, METHODS
from beam_projector.transforms.model import PIXEL_SCALES, POOLS
from beam_projector.transforms.neighbors import DEFAULT_DUPLICATE_THRESHOLD
from beam_projector.transforms.records import DEFAULT_MAX_IMAGE_BYTES
from beam_projector.transforms.settings import MAX_TILE, MIN_TILE
from beam_projector.transforms.sources.spec import COMPRESSIONS
from beam_projector.transforms.write.layout import TENSOR_FORMATS

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class UsageError(ValueError):
    """A problem with the options or inputs, found before any work."""


def parse_image_size(value):
    """'224' or '224x160' (height x width) -> (h, w); '' -> ()."""
    if not value:
        return ()
    parts = str(value).lower().replace("*", "x").split("x")
    try:
        hw = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--image_size must be HEIGHTxWIDTH or one number, got {value!r}") from None
    hw = hw * 2 if len(hw) == 1 else hw
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"--image_size must be HEIGHTxWIDTH or one number, got {value!r}")
    return hw


def _csv_list(value):
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()


class ProjectorOptions(PipelineOptions):
    """The flags, in the groups ``--help`` shows them in.

    A help text that does not say its default gets ``(default: X)`` appended
    by ``--help`` (``format_help``); an empty default is explained in the text.
    """

    @classmethod
    def _add_argparse_args(cls, parser):
        g = parser.add_argument_group("input")
        g.add_argument("--input", help="CSV of image paths, TFRecord file(s) of tf.Example "
                       "(TFDS shards too), or a folder or glob of images; the kind is "
                       "detected. Required")
        g.add_argument("--image_column", default="path",
                       help="CSV: column holding the image path; every other column "
                       "becomes metadata")
        g.add_argument("--image_feature", default="",
                       help="TFRecord: feature holding the encoded image or its path "
                       "(default: the TFDS dataset's image feature, else image/encoded)")
        g.add_argument("--metadata_features", default="",
                       help="TFRecord: features to keep as metadata, comma-separated "
                       "(default: every scalar feature)")
        g.add_argument("--compression", default="auto", choices=COMPRESSIONS,
                       help="TFRecord compression: auto (from the extension or the gzip "
                       "signature), none or gzip")

        g = parser.add_argument_group("sampling")
        g.add_argument("--max_items", type=int, default=1500, help="sample size N")
        g.add_argument("--seed", type=int, default=0, help="sampling seed")
        g.add_argument("--label_column", default="label",
                       help="metadata column --max_per_label counts by")
        g.add_argument("--max_per_label", type=int, default=None,
                       help="stratified sample: at most K items per label value "
                       "(default: no per-label cap)")

        g = parser.add_argument_group("model")
        g.add_argument("--model", help="Keras .keras/.h5 file or TensorFlow SavedModel "
                       "directory (local or any Beam filesystem URI). Required")
        g.add_argument("--embedding_layer", default="",
                       help="Keras: layer(s) whose output is the embedding, comma-separated "
                       "(default: the model's output)")
        g.add_argument("--signature", default="serving_default",
                       help="SavedModel signature to call")
        g.add_argument("--embedding_output", default="",
                       help="SavedModel output key(s) to use as embeddings, comma-separated "
                       "(default: the first output)")
        g.add_argument("--image_size", default="",
                       help="model input HEIGHTxWIDTH (or one number), for models that "
                       "accept any image size (default: the model's input size)")
        g.add_argument("--batch_size", type=int, default=0,
                       help="images per model call; TensorFlow keeps the activations of "
                       "one call for the whole run (about 17 MB an image for a 224 px "
                       "MobileNetV2). 0: sized from the model's input, 6 at 224 px, up "
                       "to 32 for small inputs (BENCHMARKS.md)")
        g.add_argument("--pool", default=None, choices=POOLS,
                       help="reduce an embedding layer whose output is a feature map "
                       "(batch, H, W, C) to one vector per image: avg or max over the spatial "
                       "axes (C dimensions), or flatten (H*W*C dimensions). flatten is heavy "
                       "downstream: a 7x7x1280 map is 62,720 floats (245 KiB) an image, so "
                       "1,500 images make a 359 MiB tensor file (about 3x that as TSV), which "
                       "the browser holds whole, and the projector's PCA first projects every "
                       "vector onto 200 random directions; prefer avg or max unless the spatial "
                       "layout matters. Without --pool such a layer is refused")
        g.add_argument("--resize", default="pad", choices=RESIZE_MODES,
                       help="how images are fitted to the model input: pad (letterbox), "
                       "crop (centre) or stretch")
        g.add_argument("--pixel_scale", default="raw", choices=PIXEL_SCALES,
                       help="pixel range the model expects: raw 0-255, unit 0-1, "
                       "symmetric -1..1")

        g = parser.add_argument_group("output")
        g.add_argument("--output", help="logdir to write (local path or any Beam "
                       "filesystem URI). Required")
        g.add_argument("--tile_size", type=int, default=100,
                       help=f"sprite tile side in px, {MIN_TILE}-{MAX_TILE}; shrunk "
                       "automatically to keep the sprite within 8192 px")
        # tsv is the default: the files of the original tutorial, which other
        # tools and projector.tensorflow.org's "Load" dialog take. binary loads
        # many times faster in TensorBoard for big runs (BENCHMARKS.md).
        g.add_argument("--tensor_format", default="tsv", choices=TENSOR_FORMATS,
                       help="tsv: feature_vecs.tsv, tab-separated text; binary: "
                       "feature_vecs.bytes, little-endian float32 that TensorBoard "
                       "loads 25x faster (for big runs)")
        g.add_argument("--no_preview", action="store_true", default=False,
                       help="do not write preview.png (the thumbnails at the layout's "
                       "positions, or a 2-D PCA with --layout none) at the logdir root")
        g.add_argument("--standalone", action="store_true", default=False,
                       help="also write a static export for the standalone Embedding "
                       "Projector: .bytes tensors, projector_config.json and index.html")
        g.add_argument("--neighbors", type=int, default=10,
                       help="K nearest neighbours behind the nn_* and duplicate metadata "
                       "columns and suspects.tsv (default: 10; 0 turns them off)")
        g.add_argument("--neighbors_tensor", default="",
                       help="embedding tensor the neighbours are found in (default: the first)")
        g.add_argument("--duplicate_threshold", type=float,
                       default=DEFAULT_DUPLICATE_THRESHOLD,
                       help="mean grey difference (0-255) of two 16x16 thumbnails at or "
                       "below which neighbours are the same picture (default: "
                       f"{DEFAULT_DUPLICATE_THRESHOLD:g}; measured in BENCHMARKS.md)")
        g.add_argument("--layout", default=DEFAULT_LAYOUT, choices=METHODS,
                       help="umap: a layout of every point computed offline (the "
                       "projector's own t-SNE and UMAP see 10,000 and 5,000 of them), saved "
                       "with the label-error, duplicate and outlier views in the "
                       "projector's Bookmarks panel, plus a cluster column; it costs about "
                       "7 s and 160 MiB at 6,000 MobileNetV2 images (the UMAP fit runs in a "
                       "child process). none: no layout, no bookmarks")
        g.add_argument("--layout_dims", type=int, default=2, choices=(2, 3),
                       help="2-D or 3-D layout")
        g.add_argument("--layout_sample", type=int, default=DEFAULT_SAMPLE,
                       help="the layout is fitted on the first this many items in output "
                       "order; every other item is placed from its nearest of them")

        g = parser.add_argument_group("failures")
        g.add_argument("--max_image_bytes", type=int, default=DEFAULT_MAX_IMAGE_BYTES,
                       help="an image file (or TFRecord image) larger than this is an "
                       "errors.tsv row and is never read past this many bytes + 1 (256 MiB: "
                       "the raw size of an 8-bit RGB image at Pillow's pixel limit, which "
                       "no photo's file reaches)")
        g.add_argument("--max_error_fraction", type=float, default=0.1,
                       help="fail the job, publishing nothing, when more of the sampled "
                       "items fail (errors.tsv lists them)")

        g = parser.add_argument_group("run")
        g.add_argument("--config", default=None,
                       help="YAML file of option: value (any option here or any Beam "
                       "option); flags on the command line override it (default: none; "
                       "see configs/)")
        g.add_argument("--log_level", default=None, choices=LOG_LEVELS,
                       help="show TensorFlow's, Beam's and Pillow's own messages from this "
                       "level up (default: none, only beam-projector's progress, warnings "
                       "and summary)")
        g.add_argument("-v", "--verbose", action="count", default=0,
                       help="same as --log_level INFO (-vv: DEBUG) (default: off)")

    @property
    def library_log_level(self):
        """The level libraries log at: --log_level, else from -v, else None (quiet)."""
        if self.log_level:
            return self.log_level
        if self.verbose:
            return "DEBUG" if self.verbose > 1 else "INFO"
        return None

    @property
    def layers(self):
        return _csv_list(self.embedding_layer)

    @property
    def outputs(self):
        return _csv_list(self.embedding_output)

    @property
    def image_hw(self):
        """--image_size as (height, width); () when not given."""
        return parse_image_size(self.image_size)

    @property
    def metadata_feature_list(self):
        return _csv_list(self.metadata_features)


# --- --help ----------------------------------------------------------------------
# Beam's own parser is built with add_help=False and only ever parses known
# args, so -h never reaches argparse's help: the entry point asks for it
# explicitly (``help_requested``) before --config is expanded or Beam parses.

HELP_FLAGS = ("-h", "--help")
BEAM_HELP_FLAG = "--help_beam"
PROG = "beam-projector"


class _HelpFormatter(argparse.HelpFormatter):
    """Appends each option's default unless its help already says it."""

    def __init__(self, prog):
        super().__init__(prog, max_help_position=30, width=100)

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is argparse.SUPPRESS or "default" in text or "Required" in text:
            return text
        if action.nargs == 0:  # a switch
            return f"{text} (default: off)"
        return f"{text} (default: {action.default})"


def help_parser() -> argparse.ArgumentParser:
    """A parser holding exactly ProjectorOptions' arguments, for ``--help``."""
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=_HelpFormatter, allow_abbrev=False,
        usage=f"{PROG} --input IN --model MODEL --output LOGDIR [options]",
        description="Images + a TensorFlow model -> a TensorBoard Embedding Projector logdir "
        "(tensor, metadata, sprite). Also: python -m beam_projector.",
        epilog=f"Beam's own options (--runner, --direct_num_workers, Dataflow, Flink, ...) are "
        f"accepted too; list them with: {PROG} {BEAM_HELP_FLAG}")
    ProjectorOptions._add_argparse_args(parser)  # noqa: SLF001 - the one declaration
    return parser


def format_help() -> str:
    return help_parser().format_help()


def format_beam_help() -> str:
    """Every registered Beam PipelineOptions argument except ours."""
    from apache_beam.options.pipeline_options import _BeamArgumentParser

    parser = _BeamArgumentParser(prog=f"{PROG} (Beam options)", allow_abbrev=False,
                                 add_help=False, formatter_class=_HelpFormatter)
    seen = {}
    for cls in PipelineOptions.__subclasses__():
        seen.setdefault(str(cls), cls)
    for cls in seen.values():
        if not issubclass(cls, ProjectorOptions):
            cls._add_argparse_args(parser)  # noqa: SLF001 - as Beam's get_all_options does
    return parser.format_help()


def help_requested(argv) -> str:
    """"beam" for --help_beam, "projector" for -h/--help, "" otherwise
    (flags after a bare ``--`` do not count)."""
    for arg in argv:
        if arg == "--":
            break
        if arg == BEAM_HELP_FLAG:
            return "beam"
        if arg in HELP_FLAGS:
            return "projector"
    return ""
