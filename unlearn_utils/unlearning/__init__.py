"""Fine-tuning unlearning: the method table (``registry``), losses (one function each), the ``unlearn()`` entry
point, and Needle (``needle()``)."""

from . import registry
from .methods import DEFAULTS, METHODS, UnlearnConfig, cached_unlearn, load_unlearned, save_unlearned, unlearn
from .needle import needle
from .registry import Method, get_method, register

__all__ = ["DEFAULTS", "METHODS", "Method", "UnlearnConfig", "cached_unlearn", "get_method", "load_unlearned",
           "needle", "register", "registry", "save_unlearned", "unlearn"]
