"""Your own model handler -> embeddings -> a projector logdir.

``EmbedImages`` takes any Beam ``ModelHandler`` whose examples are decoded
images (H x W x 3 uint8 arrays): here Beam's own scikit-learn handler,
serving a PCA pickled to a file, with an inference function that turns each
image into its pixels. The stage decodes, resizes and batches; the handler
embeds; ``WriteToProjector`` writes.

    python -m beam_projector.pipeline.examples.own_handler --output logs/handler
"""
import argparse
import os
import pickle
import tempfile

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.sklearn_inference import SklearnModelHandlerNumpy

from beam_projector import EmbedImages, WriteToProjector
from beam_projector.pipeline.examples import local_options
from beam_projector.pipeline.examples.from_rows import digit_rows

SIDE = 8


def grey_pixels(batch):
    """(B, H, W, 3) uint8 images -> (B, H*W) grey values in 0..16, as the
    digits the PCA was fitted on."""
    x = np.stack(batch).astype(np.float32).mean(axis=-1)
    return (255.0 - x.reshape(len(batch), -1)) * (16.0 / 255.0)


def pca_inference(model, batch, inference_args=None):
    """The handler's inference function: the PCA's projection, not predict()."""
    return model.transform(grey_pixels(batch))


def pickled_pca(folder):
    """A PCA fitted on the digits, pickled the way a user ships an sklearn model."""
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA

    path = os.path.join(folder, "pca.pkl")
    with open(path, "wb") as f:
        pickle.dump(PCA(12, random_state=0).fit(load_digits().data), f)
    return path


def run(rows, output, model_uri, beam_args=()):
    options = local_options(beam_args)
    handler = SklearnModelHandlerNumpy(model_uri=model_uri, inference_fn=pca_inference)
    with beam.Pipeline(options=options) as p:
        (p
         | "Rows" >> beam.Create([{"id": r["id"], "image": r["png"], "label": r["label"]}
                                  for r in rows])
         | "Embed" >> EmbedImages(handler, image_size=(SIDE, SIDE), resize="stretch")
         | "Projector" >> WriteToProjector(output, columns=["id", "label"]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--count", type=int, default=300)
    args, beam_args = parser.parse_known_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        run(digit_rows(args.count), args.output, pickled_pca(folder), beam_args)


if __name__ == "__main__":
    main()
