"""beam-projector as a library: write a TensorBoard Embedding Projector
logdir from a PCollection you already have.

    import apache_beam as beam
    from transforms import ImagesToProjector, ReadImages

    with beam.Pipeline() as p:
        (p | beam.Create([(png_bytes, {"label": "cat"}), ...])
           | ImagesToProjector(output="logs/run1", model="m.keras",
                               layers=["embedding"], columns=["label"]))

Each module holds one concept: ``api`` (the public transforms below),
``sources`` (image references), ``sampling`` (the seeded bottom-k sample and
the first-N cuts), ``decode`` (the one decode that gives the model input
and the thumbnail, and the margin's check),
``inference`` (the embedding ``ModelHandler``), ``checks`` (what is checked
once, before any work), ``projector`` (pure layout and file-format rules of
TensorBoard's projector) and ``write`` (the single ordered stage that
publishes a logdir).
"""
__all__ = ["ImagesToProjector", "ReadImages", "ReadResult", "ProjectorResult",
           "ImageRef", "ErrorRow", "Embedded", "ModelSpec", "KeepFirstN",
           "KeepFirstPerLabel", "SampleItems", "ERRORS_TAG", "METRICS_NAMESPACE"]

_HOME = {"ImagesToProjector": "api", "ReadImages": "api", "ReadResult": "api",
         "ProjectorResult": "api", "ImageRef": "items", "ErrorRow": "items",
         "Embedded": "items", "ERRORS_TAG": "items", "METRICS_NAMESPACE": "items",
         "ModelSpec": "inference", "KeepFirstN": "sampling", "KeepFirstPerLabel": "sampling",
         "SampleItems": "sampling"}


def __getattr__(name):
    # Imported on first use: ``import transforms.sources`` (the CLI, workers)
    # must not pull in every module, and the CLI configures TensorFlow's
    # logging before anything imports it.
    if name in _HOME:
        import importlib
        return getattr(importlib.import_module(f"transforms.{_HOME[name]}"), name)
    raise AttributeError(f"module 'transforms' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
