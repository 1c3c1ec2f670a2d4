"""Read a CSV with the public source, add a derived metadata column, write.

``ReadImages`` is the CLI's own reader (CSV, TFRecord or folder: detected);
its dead letters (``read.errors``) go into the logdir's errors.tsv with the
rest. Here a ``parity`` column is derived from ``label`` with ``beam.Map``.

    python -m beam_projector.pipeline.examples.from_csv --input images.csv --model m.keras \
        --layer embedding --output logs/csv
"""
import argparse

import apache_beam as beam

from beam_projector import ImagesToProjector, ReadImages
from beam_projector.pipeline.examples import local_options


def with_parity(ref, label_index):
    """An ImageRef with one more metadata value: "even" or "odd" of its label."""
    parity = "even" if int(ref.metadata[label_index]) % 2 == 0 else "odd"
    return ref._replace(metadata=ref.metadata + (parity,))


def run(csv_path, output, model, layer, max_items=200, beam_args=()):
    options = local_options(beam_args)
    source = ReadImages(csv_path, image_column="path")   # checks the CSV now, on the launcher
    columns = source.columns + ("parity",)
    with beam.Pipeline(options=options) as p:
        read = p | "Read" >> source
        (read.images
         | "AddParity" >> beam.Map(with_parity, source.columns.index("label"))
         | "Projector" >> ImagesToProjector(output=output, model=model, layers=[layer],
                                            columns=columns, max_items=max_items, seed=0,
                                            errors=[read.errors]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="CSV with path and label columns")
    parser.add_argument("--model", required=True)
    parser.add_argument("--layer", default="embedding")
    parser.add_argument("--output", required=True)
    parser.add_argument("--max_items", type=int, default=200)
    args, beam_args = parser.parse_known_args(argv)
    run(args.input, args.output, args.model, args.layer, args.max_items, beam_args)


if __name__ == "__main__":
    main()
