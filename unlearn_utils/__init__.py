"""unlearn-kit helpers: the synthetic world, its model, unlearning methods and the probes that test them.

Data flows one way: world -> model -> unlearn -> probe -> report. Each step is one module:
``world``, ``models`` (+ ``arch``), ``training``, ``evaluate``, ``quantize``, ``plotting``, ``checks``.
"""

import os as _os

# Deterministic, quiet CPU defaults (tokenizers' own threads fight torch's on 2 cores).
_os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"
