"""beam-projector: images + a TensorFlow model -> a TensorBoard Embedding
Projector logdir, as an Apache Beam pipeline.

The package keeps the design card's two parts: ``beam_projector.transforms``
(the library: PTransforms, DoFns and the pure rules they use) and
``beam_projector.pipeline`` (the command built on it: options, the CLI, the
run). Imports run one way, the command uses the library, never the reverse.
The public API is re-exported here:

    import apache_beam as beam
    from beam_projector import ImagesToProjector, ReadImages

    with beam.Pipeline() as p:
        (p | ReadImages("images.csv", image_column="path")
           | ImagesToProjector(output="logs/run1", model="m.keras", layers=["embedding"]))

or in parts: ``images | EmbedImages(model_or_handler) | WriteToProjector(out,
columns=[...])``, and ``rows | WriteToProjector(...)`` for vectors computed
anywhere (docs/library.md).
"""
import importlib

# name -> module of beam_projector.transforms that defines it; imported on
# first use, so ``import beam_projector`` (the CLI's first import, every
# worker's unpickling) does not pull in TensorFlow.
_PUBLIC = {
    "ReadImages": "sources.read", "ReadResult": "sources.read",
    "SampleItems": "sampling",
    "EmbedImages": "inference", "EmbedResult": "inference",
    "EmbeddingModelHandler": "inference",
    "NeighborColumns": "neighbors",
    "WriteToProjector": "write.to_projector", "ProjectorResult": "write.to_projector",
    "ImagesToProjector": "composite",
    "LayoutColumns": "layout_stage",
    "ModelSpec": "model", "Settings": "settings",
    "ImageRef": "records", "Embedded": "records", "ErrorRow": "records",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        module = importlib.import_module(f"beam_projector.transforms.{_PUBLIC[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'beam_projector' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
