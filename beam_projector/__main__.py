"""``python -m beam_projector``: the same command as ``beam-projector``."""
import sys

from beam_projector.pipeline.cli import main

sys.exit(main())
