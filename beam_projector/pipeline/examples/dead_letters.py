"""Malformed rows become dead letters; the rest is published.

Among good digit rows: one without its image, one whose image is a base64
str instead of bytes, one whose image is not an image, and one that lacks
the ``label`` column asked for. Each becomes one ``ErrorRow`` naming the
row by its ``id`` (in ``result.errors`` and the logdir's errors.tsv); the
job goes on and publishes the good rows. (``EmbedImages(...)
.with_exception_handling()`` returns the Beam-style ``(embedded, errors)``
pair instead, for a pipeline that routes its dead letters itself.)

    python -m beam_projector.pipeline.examples.dead_letters --model m.keras --output logs/dead
"""
import argparse
import base64

import apache_beam as beam

from beam_projector import EmbedImages, WriteToProjector
from beam_projector.pipeline.examples import local_options
from beam_projector.pipeline.examples.from_rows import digit_rows


def rows_with_mistakes(count=60):
    good = [{"id": r["id"], "image": r["png"], "label": r["label"]} for r in digit_rows(count)]
    png = good[0]["image"]
    bad = [{"id": "no-image", "label": "1"},
           {"id": "base64-text", "image": base64.b64encode(png).decode() * 40, "label": "1"},
           {"id": "not-an-image", "image": b"GIF89a but truncated", "label": "1"},
           {"id": "no-label", "image": png}]
    return good + bad


def run(rows, output, model, layer="embedding", beam_args=()):
    options = local_options(beam_args)
    with beam.Pipeline(options=options) as p:
        result = (p
                  | "Rows" >> beam.Create(rows)
                  | "Embed" >> EmbedImages(model, layers=[layer])
                  | "Projector" >> WriteToProjector(output, columns=["id", "label"]))
        result.errors | "Show" >> beam.Map(
            lambda e: print(f"dead letter: {e.ref} [{e.stage}] {e.reason}"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--layer", default="embedding")
    parser.add_argument("--output", required=True)
    args, beam_args = parser.parse_known_args(argv)
    run(rows_with_mistakes(), args.output, args.model, args.layer, beam_args)


if __name__ == "__main__":
    main()
