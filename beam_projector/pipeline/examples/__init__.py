"""Runnable examples of beam-projector as a library (docs/library.md); the
tests run each end to end."""
from apache_beam.options.pipeline_options import PipelineOptions


def local_options(beam_args=()) -> PipelineOptions:
    """The Beam options an example runs with: the given flags, and without
    ``--runner`` the FnApiRunner in this process (Beam's DirectRunner first
    tries to download a runner binary, which fails offline)."""
    options = PipelineOptions(list(beam_args))
    if not options.get_all_options()["runner"]:
        options = PipelineOptions(list(beam_args), runner="FnApiRunner")
    return options
