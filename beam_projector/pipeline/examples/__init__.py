"""Runnable examples of beam-projector as a library (README: "Use it in your
own pipeline"); ``tests/test_examples.py`` runs each end to end."""
