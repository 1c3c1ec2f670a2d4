"""What a run decides beyond its input, model and output: one object, checked once.

``ImagesToProjector`` makes it from its keywords; the CLI words its errors as
flags (every message starts with the field's name, which is the flag's).
Each stage reads the field it needs from here, under this one name.
"""
import dataclasses
from typing import Optional

from beam_projector.transforms.images import RESIZE_MODES
from beam_projector.transforms.records import DEFAULT_MAX_IMAGE_BYTES
from beam_projector.transforms.sampling import SampleSizes, sample_sizes
from beam_projector.transforms.write.layout import TENSOR_FORMATS

MIN_TILE, MAX_TILE = 8, 1024


@dataclasses.dataclass(frozen=True)
class Settings:
    """The run's choices; a ``ValueError`` naming the field when one is out of range."""
    max_items: int = 1500                 # N: the most images the projector shows
    seed: int = 0                         # sampling seed
    max_per_label: Optional[int] = None   # at most this many per label value
    label_column: str = "label"           # the column max_per_label counts by
    tile_size: int = 100                  # sprite tile side asked for (shrunk to fit 8192 px)
    resize: str = "pad"                   # how images are fitted to the model input
    tensor_format: str = "tsv"            # tsv or binary tensor files
    preview: bool = True                  # preview.png at the logdir root
    standalone: bool = False              # the static standalone-projector export too
    max_error_fraction: float = 0.1       # fail, publishing nothing, above this
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES   # no image read goes past this + 1

    def __post_init__(self):
        if self.max_items is None or self.max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {self.max_items}")
        if not MIN_TILE <= self.tile_size <= MAX_TILE:
            raise ValueError(f"tile_size must be between {MIN_TILE} and {MAX_TILE} px, "
                             f"got {self.tile_size}")
        if not 0.0 <= self.max_error_fraction < 1.0:
            raise ValueError(f"max_error_fraction must be in [0, 1), "
                             f"got {self.max_error_fraction}")
        if self.max_per_label is not None and self.max_per_label < 1:
            raise ValueError(f"max_per_label must be at least 1, got {self.max_per_label}")
        if self.max_image_bytes is None or self.max_image_bytes < 1:
            raise ValueError(f"max_image_bytes must be at least 1, got {self.max_image_bytes}")
        if self.tensor_format not in TENSOR_FORMATS:
            raise ValueError(f"tensor_format must be one of {', '.join(TENSOR_FORMATS)}, "
                             f"got {self.tensor_format!r}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, "
                             f"got {self.resize!r}")

    @property
    def sample_sizes(self) -> SampleSizes:
        """How many to sample: N and each label's quota, each with its failure margin."""
        return sample_sizes(self.max_items, self.max_error_fraction, self.max_per_label)
