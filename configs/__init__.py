"""Ready-made option sets (the YAML files here), used as ``--config NAME`` (e.g.
``--config dataflow``) or ``--config configs/NAME.yaml``; installed with the
package as ``beam_projector.configs``."""
