"""Every beam-projector option, declared once.

A ``PipelineOptions`` subclass, so the flags travel with the pipeline to
Dataflow/Flink workers and mix freely with Beam's own flags.
"""
from apache_beam.options.pipeline_options import PipelineOptions

from transforms.decode import RESIZE_MODES
from transforms.inference import PIXEL_SCALES
from transforms.neighbors import DEFAULT_DUPLICATE_THRESHOLD
from transforms.sources import COMPRESSIONS
from transforms.write import TENSOR_FORMATS

MIN_TILE, MAX_TILE = 8, 1024


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
    @classmethod
    def _add_argparse_args(cls, parser):
        g = parser.add_argument_group("beam-projector")
        g.add_argument("--input", help="CSV file (or glob) with a header row; TFRecord "
                       "file(s) of tf.Example; or a folder (class sub-folders give a label "
                       "column) or glob of image files. The kind is detected; relative "
                       "image paths resolve against the CSV's/TFRecord's folder")
        g.add_argument("--image_column", default="path",
                       help="CSV column holding the image path (default: path); "
                       "every other column becomes metadata")
        g.add_argument("--image_feature", default="image/encoded",
                       help="TFRecord feature holding the encoded image or its path "
                       "(default: image/encoded)")
        g.add_argument("--metadata_features", default="",
                       help="TFRecord features to keep as metadata, comma-separated "
                       "(default: every scalar feature)")
        g.add_argument("--compression", default="auto", choices=COMPRESSIONS,
                       help="TFRecord compression: auto (from the extension or the gzip "
                       "signature, default), none or gzip")
        g.add_argument("--label_column", default="label",
                       help="metadata column --max_per_label counts by (default: label)")
        g.add_argument("--max_per_label", type=int, default=None,
                       help="stratified sample: at most K items per label value")
        g.add_argument("--model", help="Keras .keras/.h5 file or TensorFlow SavedModel directory")
        g.add_argument("--embedding_layer", default="",
                       help="layer(s) whose output is the embedding, comma-separated "
                       "(default: the model's output)")
        g.add_argument("--signature", default="serving_default",
                       help="SavedModel signature to call (default: serving_default)")
        g.add_argument("--embedding_output", default="",
                       help="SavedModel output key(s) to use as embeddings, comma-separated")
        g.add_argument("--image_size", default="",
                       help="model input HEIGHTxWIDTH (or one number), for models that "
                       "accept any image size; must match a fixed input size")
        g.add_argument("--output", help="logdir to write (local path or any Beam filesystem URI)")
        g.add_argument("--max_items", type=int, default=1500,
                       help="sample size N (default: 1500)")
        g.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
        g.add_argument("--tile_size", type=int, default=100,
                       help=f"sprite tile side in px, {MIN_TILE}-{MAX_TILE} (default: 100); "
                       "shrunk automatically to keep the sprite within 8192 px")
        g.add_argument("--batch_size", type=int, default=32,
                       help="images per model call (default: 32)")
        g.add_argument("--resize", default="pad", choices=RESIZE_MODES,
                       help="how images are fitted to the model input (default: pad)")
        g.add_argument("--pixel_scale", default="raw", choices=PIXEL_SCALES,
                       help="raw: 0-255 (default), unit: 0-1, symmetric: -1-1")
        # binary is the default: a live TensorBoard answers /tensor for
        # 10,000 x 1280 many times faster than from TSV (BENCHMARKS.md).
        g.add_argument("--tensor_format", default="binary", choices=TENSOR_FORMATS,
                       help="binary little-endian float32 (default, fast to load) or tsv")
        g.add_argument("--max_error_fraction", type=float, default=0.1,
                       help="fail the job when more of the sampled items fail (default: 0.1)")
        g.add_argument("--no_preview", action="store_true", default=False,
                       help="do not write preview.png (the thumbnails at a 2-D PCA of the "
                       "embeddings) at the logdir root")
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
        g.add_argument("--config", default=None,
                       help="YAML file of option: value (any option above or any Beam "
                       "option); flags on the command line override it (see configs/)")

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
