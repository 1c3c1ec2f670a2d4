"""The library: reusable PTransforms and DoFns, and the pure rules they use.

One concept a module, imports only downward (docs/architecture.md has the
map and the stage diagram):

- data: ``records`` (what flows between stages), ``settings`` (a run's
  checked choices), ``files`` (Beam FileSystems helpers), ``worker`` (a
  worker process's own setup);
- reading: ``sources`` (CSV, TFRecord/TFDS, folders -> ``ImageRef``s),
  ``sampling`` (the seeded bottom-k sample and the first-N cuts);
- embedding: ``images`` (one pure decode), ``decode`` (its Beam stage),
  ``model`` (loading, freezing, one batch shape), ``inference`` (the
  ModelHandler and ``EmbedImages``), ``first_n`` (the first N that decode,
  refilled from the margin);
- columns: ``neighbors`` (nearest-neighbour columns), ``suspects``;
- writing: ``projector`` and ``png`` (pure file-format rules), ``preview``,
  ``standalone``, ``staging`` (thumbnails out of the writer's group),
  ``write`` (the one ordered stage and the publish transaction);
- ``checks`` (launcher checks on the model and output) and ``composite``
  (``ImagesToProjector``, the whole job).

The public names are exported by ``beam_projector`` itself.
"""

from beam_projector.transforms.worker import quiet_worker_interrupts as _quiet_worker_interrupts

# a no-op except in a local SDK worker process of a quiet CLI run (see there)
_quiet_worker_interrupts()
