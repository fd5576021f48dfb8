"""What every notebook does first: read its parameters, fix the seed, get the world and the models.

``S = start(SMOKE, ...)`` returns a :class:`Session` holding the world, the original model, the retain
model (built on first use) and helpers to save figures and headline numbers for the report.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .models import SMOKE_CONFIG, WorldModelConfig, build_world_model, get_device, load_model
from .training import set_seed
from .world import World


@dataclass
class Session:
    world: World
    config: WorldModelConfig
    model: object
    tokenizer: object
    split: str = "forget05"
    smoke: bool = False
    device: object = None
    dtype: object = None
    report_dir: str | None = None
    notebook: str = "notebook"
    model_name: str = "world"
    results: dict = field(default_factory=dict)
    _retain: object = None

    @property
    def retain_model(self):
        """The model trained without the forget split's people (built and cached on first use)."""
        if self._retain is None:
            self._retain, _ = build_world_model(self.config, exclude_split=self.split, device=self.device,
                                                dtype=self.dtype)
        return self._retain

    def fresh_model(self):
        """A new copy of the original model (unlearning changes weights in place)."""
        model, _ = build_world_model(self.config, device=self.device, dtype=self.dtype)
        return model

    def unlearned(self, method: str, **settings):
        """The original model unlearned on this session's forget split with ``method`` (cached on disk).

        Notebook 01 trains them (with their trajectories, see ``cached_unlearn``); notebooks 02-06 reuse them, so
        each is trained once per setting.
        """
        from .unlearning import cached_unlearn

        return cached_unlearn(self.model, self.tokenizer, self.world, self.split, method,
                              model_key=self.config.key() if self.model_name == "world" else None, **settings)

    def train_grun(self, forget, retain, **settings):
        """:func:`unlearn_utils.grun.train_grun` on this session's model, cached on disk like :meth:`unlearned`;
        returns ``(GatedModel, log)``."""
        from .grun import cached_train_grun

        return cached_train_grun(self.model, self.tokenizer, forget, retain,
                                 model_key=self.config.key() if self.model_name == "world" else None, **settings)

    def save_fig(self, fig, name: str) -> None:
        """Save a figure under REPORT_DIR/figures/<notebook>_<name>.png when a report folder is set."""
        if self.report_dir:
            from .plotting import save

            save(fig, Path(self.report_dir) / "figures" / f"{self.notebook}_{name}.png")

    def record(self, **numbers) -> None:
        """Remember headline numbers; :meth:`finish` writes them to REPORT_DIR/results/<notebook>.json."""
        self.results.update(numbers)

    def finish(self) -> dict:
        from .reproduce import write_results

        write_results(self.notebook, {"smoke": self.smoke, **self.results}, self.report_dir)
        return self.results


def start(smoke: bool = False, model: str = "world", device=None, dtype=None, seed: int = 0,
          report_dir: str | None = None, split: str = "forget05", notebook: str = "notebook",
          **config_overrides) -> Session:
    """Set the seed, pick the device, build (or load from cache) the world model.

    smoke=True uses a tiny world and model that train in seconds (for CI); numbers are then not meaningful.
    """
    set_seed(seed)
    torch.set_grad_enabled(True)
    base = WorldModelConfig(**SMOKE_CONFIG) if smoke else WorldModelConfig()
    config = dataclasses.replace(base, **config_overrides)
    world = config.world()
    dev = get_device(device)
    if model == "world":
        m, tok = build_world_model(config, device=dev, dtype=dtype)
    else:
        m, tok = load_model(model, device=dev, dtype=dtype)
    return Session(world=world, config=config, model=m, tokenizer=tok, split=split, smoke=smoke, device=dev,
                   dtype=dtype, report_dir=report_dir, notebook=notebook, model_name=model)
