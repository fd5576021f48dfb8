"""Fine-tuning unlearning: losses (one function each) and the ``unlearn()`` entry point."""

from .methods import DEFAULTS, METHODS, UnlearnConfig, cached_unlearn, load_unlearned, save_unlearned, unlearn

__all__ = ["DEFAULTS", "METHODS", "UnlearnConfig", "cached_unlearn", "load_unlearned", "save_unlearned", "unlearn"]
