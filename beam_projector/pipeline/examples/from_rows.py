"""Your own PCollection of image bytes + metadata -> a projector logdir.

``beam.Create`` stands in for any source you already have (BigQuery rows,
a Kafka topic dumped to files, a TFX ExampleGen): each element is a dict
with the encoded image bytes (``png``) and the metadata fields.

    python -m beam_projector.pipeline.examples.from_rows --model m.keras --layer embedding --output logs/rows
"""
import argparse
import io

import apache_beam as beam

from beam_projector import ImagesToProjector
from beam_projector.pipeline.examples import local_options


def digit_rows(count=300):
    """Rows as a BigQuery read would give them: an id, PNG bytes, a label
    (scikit-learn's 8x8 digits, made here: nothing is downloaded)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rows = []
    for i in range(min(count, len(digits.images))):
        buf = io.BytesIO()
        Image.fromarray((255 - digits.images[i] * (255 / 16)).astype("uint8"), mode="L").save(
            buf, format="PNG")
        rows.append({"id": f"digit-{i:04d}", "png": buf.getvalue(), "label": str(digits.target[i])})
    return rows


def run(rows, output, model, layer, max_items=200, beam_args=()):
    options = local_options(beam_args)
    with beam.Pipeline(options=options) as p:
        (p
         | "Rows" >> beam.Create(rows)
         | "Projector" >> ImagesToProjector(output=output, model=model, layers=[layer],
                                            columns=["id", "label"], image_field="png",
                                            max_items=max_items, seed=0))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--layer", default="embedding")
    parser.add_argument("--output", required=True)
    parser.add_argument("--max_items", type=int, default=200)
    args, beam_args = parser.parse_known_args(argv)
    run(digit_rows(), args.output, args.model, args.layer, args.max_items, beam_args)


if __name__ == "__main__":
    main()
