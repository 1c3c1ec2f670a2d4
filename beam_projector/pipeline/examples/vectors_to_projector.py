"""Vectors computed anywhere -> a projector logdir (``WriteToProjector``).

Here the vectors come from scikit-learn (a PCA of the 8x8 digits, fitted
outside Beam) standing in for a PyTorch model, an endpoint or a vector
database export; each row carries its vector, its PNG for the sprite and its
metadata. Nothing is downloaded.

    python -m beam_projector.pipeline.examples.vectors_to_projector --output logs/vectors
"""
import argparse
import io

import apache_beam as beam

from beam_projector import WriteToProjector
from beam_projector.pipeline.examples import local_options


def digit_vector_rows(count=300):
    """Rows with an id, a 16-d vector, the picture as PNG bytes and a label."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA

    digits = load_digits()
    vectors = PCA(16, random_state=0).fit_transform(digits.data)
    rows = []
    for i in range(min(count, len(digits.images))):
        buf = io.BytesIO()
        Image.fromarray((255 - digits.images[i] * (255 / 16)).astype("uint8"), mode="L").save(
            buf, format="PNG")
        rows.append({"id": f"digit-{i:04d}", "vector": vectors[i].tolist(),
                     "image": buf.getvalue(), "label": str(digits.target[i])})
    return rows


def run(rows, output, beam_args=()):
    options = local_options(beam_args)
    with beam.Pipeline(options=options) as p:
        (p
         | "Rows" >> beam.Create(rows)
         | "Projector" >> WriteToProjector(output, columns=["id", "label"]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--count", type=int, default=300)
    args, beam_args = parser.parse_known_args(argv)
    run(digit_vector_rows(args.count), args.output, beam_args)


if __name__ == "__main__":
    main()
