"""The library: reusable PTransforms and DoFns, and the pure rules they use.

Each module holds one concept: ``api`` (the public composites),
``sources`` (image references), ``sampling`` (the seeded bottom-k sample and
the first-N cuts), ``decode`` (the one decode that gives the model input
and the thumbnail, and the margin's check), ``inference`` (the embedding
``ModelHandler``), ``checks`` (what is checked once, before any work),
``projector`` (pure layout and file-format rules of TensorBoard's
projector) and ``write`` (the single ordered stage that publishes a
logdir). The public names are exported by ``beam_projector`` itself.
"""
