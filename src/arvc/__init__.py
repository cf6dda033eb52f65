"""arvc: train RVC voice models with a rated, reference-tested optimizer system."""

__version__ = "0.1.0"
