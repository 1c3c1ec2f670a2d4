"""Builds and runs the beam-projector pipeline (options, graph, ``run()``)."""
