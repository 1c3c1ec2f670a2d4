"""Runnable examples of beam-projector as a library (docs/library.md); the
tests run each end to end."""
