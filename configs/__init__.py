"""Ready-made option sets (YAML), loaded with ``--config FILE``."""
