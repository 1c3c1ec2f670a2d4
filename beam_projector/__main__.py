"""``python -m beam_projector``: the same command as ``beam-projector``."""
from beam_projector.pipeline.cli import command

command()
