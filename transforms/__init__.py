"""Reusable Beam transforms and the pure functions behind them.

Each module holds one concept: ``sources`` (image references), ``sampling``
(the seeded bottom-k sample), ``decode`` (one read, one decode per image),
``inference`` (the embedding ``ModelHandler``), ``projector`` (pure layout and
file-format rules of TensorBoard's projector) and ``write`` (the single
ordered stage that publishes a logdir).
"""
