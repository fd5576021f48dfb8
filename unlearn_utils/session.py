"""What every notebook does first: read its parameters, fix the seed, get the world and the models.

``S = start(SMOKE, ...)`` returns a :class:`Session` holding the world, the original model, the retain
model (built on first use), the data to forget and keep (the world's split, or a benchmark file named by the
``DATA`` parameter) and helpers to save figures and headline numbers for the report.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .models import SMOKE_CONFIG, WorldModelConfig, build_world_model, get_device, load_model
from .training import set_seed
from .world import World

# How often notebook 01 evaluates its unlearning runs (its EVAL_EVERY; 5 in smoke mode): Session.unlearned records
# the same trajectory, under the same name, so any notebook can train a model notebook 01 then loads.
TRAJECTORY_EVERY, TRAJECTORY_EVERY_SMOKE = 20, 5


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
    data: dict | None = None          # forget / retain questions from a file (DATA); None: the world's split
    retain_model_name: str | None = "world"
    settings: dict = field(default_factory=dict)  # LR / STEPS / BATCH_SIZE given to the notebook (None: preset)
    threads: int | None = None
    _model_key: str | None = None
    _retain: object = None
    _eval: object = None
    _trajectory: object = None

    @property
    def on_world(self) -> bool:
        """True when the forget / retain sets are the world's (DATA = "world")."""
        return self.data is None

    @property
    def on_world_model(self) -> bool:
        """True for the synthetic world's model; False for a pretrained model (SmolLM2 or any checkpoint)."""
        return self.model_name == "world"

    def default(self, value, world, real):
        """A notebook parameter left at None takes the model's default: ``world`` on the world model, ``real`` on a
        pretrained model (where a training step costs about 3 s on 2 cores instead of 0.05 s). A value given
        explicitly is kept."""
        if value is not None:
            return value
        return world if self.on_world_model else real

    @property
    def smoke_steps(self) -> int:
        """Training steps of one run in smoke mode: 10 on the world, 2 on a pretrained model."""
        return 10 if self.on_world_model else 2

    @property
    def known_by_category(self):
        """On the real-knowledge set: how many facts of each category the original knows (known, total, share);
        None on the world or a data file."""
        table = (self.data or {}).get("known_by_category")
        return None if table is None else table.assign(share=(table["known"] / table["total"]).round(3))

    @property
    def forget_set(self):
        """The questions to forget: the world split's trained phrasings, or the data file's forget questions."""
        return self.world.facts(self.split, "trained") if self.on_world else self.data["forget"]

    @property
    def retain_set(self):
        """The questions to keep (everyone else's facts on the world)."""
        return self.world.facts("retain", "trained", self.split) if self.on_world else self.data["retain"]

    def forget_questions(self, limit: int | None = None, seed: int = 0) -> list[str]:
        """The forget set's prompts that are questions (the world also states facts as sentences to complete);
        with ``limit``, a fixed random sample of at most that many, in their original order."""
        return _questions(self.forget_set, limit, seed)

    def retain_questions(self, limit: int | None = None, seed: int = 0) -> list[str]:
        """The retain set's questions, as :meth:`forget_questions` takes the forget set's."""
        return _questions(self.retain_set, limit, seed)

    @property
    def eval_data(self):
        """The report card's question sets (:class:`unlearn_utils.evaluate.EvalData`), built once."""
        from . import evaluate as ev

        if self._eval is None:
            self._eval = ev.eval_data(self.world, self.split) if self.on_world else ev.eval_data_from(self.data)
        return self._eval

    def tv_split(self):
        """RTT's T and V: on the world, each forget person's attributes split in two (trained phrasings); for a
        file, :func:`unlearn_utils.audit.split_tv` (whole people apart when rows name them)."""
        if self.on_world:
            return self.world.tv_split(self.split, "trained")
        from .audit import split_tv

        return split_tv(self.data["forget"], seed=0)

    @property
    def retain_model(self):
        """The model that never saw the forget set: on the world, trained without the split's people (built and
        cached on first use); otherwise the model named by ``retain_model=`` in :func:`start` (None if not given)."""
        if self._retain is None:
            if self.on_world and self.model_name == "world":
                self._retain, _ = build_world_model(self.config, exclude_split=self.split, device=self.device,
                                                    dtype=self.dtype)
            elif self.retain_model_name not in (None, "world"):
                self._retain, _ = load_model(self.retain_model_name, device=self.device, dtype=self.dtype)
        return self._retain

    def fresh_model(self):
        """A new copy of the original model (unlearning changes weights in place)."""
        if self.model_name == "world":
            model, _ = build_world_model(self.config, device=self.device, dtype=self.dtype)
            return model
        import copy

        return copy.deepcopy(self.model)

    @property
    def model_key(self) -> str:
        """Cache key of the original model: the world model's config key, or a fingerprint of another model's
        weights (so unlearned models, GRUN modules and relearning curves of any model are cached)."""
        if self.model_name == "world":
            return self.config.key()
        if self._model_key is None:
            from .data import weights_fingerprint

            self._model_key = weights_fingerprint(self.model)[:16]
        return self._model_key

    def unlearned(self, method: str, data: dict | None = None, **settings):
        """The original model unlearned on this session's forget split with ``method`` (cached on disk): ``(model,
        log)`` as :func:`unlearn_utils.unlearning.cached_unlearn` returns them.

        Each setting is trained once and then loaded, by any notebook. data: other ``{"forget": ..., "retain": ...}``
        sets to unlearn (e.g. a topic's texts in notebook 03); default: the session's.

        In smoke mode a call that sets no ``steps`` trains :attr:`smoke_steps` steps.

        Asked for with the method's own settings (nothing but ``steps``, ``seed``, ``lora`` or ``progress``) on the
        session's data, the log is notebook 01's trajectory (forget / retain /
        paraphrase / topic accuracy every 20 steps, every 5 in smoke mode). So whichever notebook asks first trains
        the very model the others load, and notebooks can run side by side without training anything twice.
        """
        from .unlearning import cached_unlearn

        if self.smoke and settings.get("steps") is None and self.settings.get("steps") is None:
            settings["steps"] = self.smoke_steps  # smoke mode trains smoke-sized runs only, whatever the cell asks
        if data is None and set(settings) <= {"steps", "seed", "lora", "progress"}:
            every = TRAJECTORY_EVERY_SMOKE if self.smoke else TRAJECTORY_EVERY
            settings.update(eval_fn=self.trajectory, eval_every=every, log_name=f"topics-every{every}")
        for k, v in self.settings.items():  # the notebook's LR / STEPS / BATCH_SIZE, where the call sets none
            if v is not None and settings.get(k) is None:
                settings[k] = v
        return cached_unlearn(self.model, self.tokenizer, self.world, self.split, method,
                              model_key=self.model_key, data=data if data is not None else self.data, **settings)

    @property
    def trajectory(self):
        """Notebook 01's ``eval_fn``: accuracy on the forget, paraphrased forget, retain and topic questions."""
        from . import evaluate as ev

        if self._trajectory is None:
            self._trajectory = ev.trajectory_metrics(self.tokenizer, self.eval_data, topics=True)
        return self._trajectory

    def train_grun(self, forget, retain, **settings):
        """:func:`unlearn_utils.grun.train_grun` on this session's model, cached on disk like :meth:`unlearned`:
        ``(GatedModel, log)``. ``steps`` and ``batch_size`` not given are notebook 04's schedule for this model
        (:func:`unlearn_utils.grun.schedule`; tiny in smoke mode), so any notebook loads the module 04 trained."""
        from .grun import cached_train_grun, schedule

        plan = schedule(self)
        for name in ("steps", "batch_size"):
            if settings.get(name) is None:
                settings[name] = plan[name]
        return cached_train_grun(self.model, self.tokenizer, forget, retain,
                                 model_key=self.model_key, **settings)

    def save_fig(self, fig, name: str) -> None:
        """Save a figure under REPORT_DIR/figures/<notebook>_<name>.png when a report folder is set."""
        if self.report_dir:
            from .plotting import save

            save(fig, Path(self.report_dir) / "figures" / f"{self.notebook}_{name}.png")

    def record(self, **numbers) -> None:
        """Remember headline numbers; :meth:`finish` writes them to REPORT_DIR/results/<notebook>.json."""
        self.results.update(numbers)

    def finish(self) -> dict:
        """Write the recorded numbers (and, on a GPU, the notebook's peak GPU memory held by tensors)."""
        from .reproduce import write_results

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            self.results["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        write_results(self.notebook, {"smoke": self.smoke, **self.results}, self.report_dir)
        return self.results


def _questions(rows, limit: int | None, seed: int) -> list[str]:
    """The prompts of ``rows`` that are questions; with ``limit``, a fixed random sample of at most that many, in
    their original order."""
    import random

    prompts = (list(rows["prompt"]) if "is_question" not in rows.column_names
               else [p for p, q in zip(rows["prompt"], rows["is_question"]) if q])
    if limit is not None and len(prompts) > limit:
        keep = sorted(random.Random(seed).sample(range(len(prompts)), limit))
        prompts = [prompts[i] for i in keep]
    return prompts


def start(smoke: bool = False, model: str = "world", device=None, dtype=None, seed: int = 0,
          report_dir: str | None = None, split: str = "forget05", notebook: str = "notebook",
          data: str = "world", retain_model: str | None = "world", unlearning: dict | None = None,
          threads: int | None = None, **config_overrides) -> Session:
    """Set the seed, pick the device and threads, build (or load from cache) the model, read the data.

    smoke=True uses a tiny world and model that train in seconds (for CI); numbers are then not meaningful.
    model: ``"world"``, ``"smollm2-135m"`` (a real pretrained model) or any model :func:`load_model` takes.
    data: ``"world"``, ``"real"`` (the real-knowledge set: ``"real:capitals"`` forgets a category,
    ``"real:share=0.2"`` a share of the known facts) or a benchmark file (``"tofu:FOLDER"``, ``"qa:FILE.jsonl"``,
    ``"wmdp:FORGET,RETAIN"``; see :func:`unlearn_utils.benchmark_data.load_data`); ``split`` then names the TOFU split.
    retain_model: with a file, a model (hub id or path) fine-tuned without the forget set (e.g. TOFU's retain
    model), the floor of RTT and forget quality; ``"world"`` builds the world's retain model.
    unlearning: the notebook's ``dict(lr=LR, steps=STEPS, batch_size=BATCH_SIZE)`` for every unlearning run (a value
    None: the model's preset, :func:`unlearn_utils.models.preset`). threads: torch threads (None:
    :func:`unlearn_utils.models.choose_threads`). config_overrides: world-model settings (:class:`WorldModelConfig`).
    """
    from .models import choose_threads

    if smoke:
        print(SMOKE_NOTE)
    set_seed(seed)
    torch.set_grad_enabled(True)
    n_threads = choose_threads(threads)
    unlearning = dict(unlearning or {})
    kinds = {"lr": (int, float), "steps": int, "batch_size": int}
    for name, value in unlearning.items():
        if name not in kinds:
            raise TypeError(f"unlearning={{{name!r}: ...}}: the notebook sets only {sorted(kinds)} for every run.")
        if value is not None and (not isinstance(value, kinds[name]) or isinstance(value, bool) or not value > 0
                                  or value == float("inf")):
            raise ValueError(f"{name.upper()} = {value!r}: it must be a positive finite number (or None for the "
                             "model's preset).")
    base = WorldModelConfig(**SMOKE_CONFIG) if smoke else WorldModelConfig()
    config = dataclasses.replace(base, **config_overrides)
    world = config.world()
    dev = get_device(device)
    from .benchmark_data import load_data

    loaded = load_data(data, split=split, seed=seed)  # read (and checked) before any model is built
    if model == "world":
        m, tok = build_world_model(config, device=dev, dtype=dtype)
    else:
        m, tok = load_model(model, device=dev, dtype=dtype)
    if loaded is not None and "real" in loaded:  # which facts to use depends on what this model knows
        from .benchmark_data import real_splits

        loaded = real_splits(m, tok, loaded["real"])
        known = loaded["known_by_category"]
        print(f"{loaded['name']}: the model knows {known['known'].sum()} of {known['total'].sum()} facts "
              f"(by category: {', '.join(f'{c} {k}' for c, k in known['known'].items())}); forgetting "
              f"{len(loaded['forget'])}, keeping {len(loaded['retain'])}")
    if smoke and loaded is not None and model != "world":
        loaded = smoke_sized(loaded)
        print(f"smoke mode: {len(loaded['forget'])} forget and {len(loaded['retain'])} retain questions")
    session = Session(world=world, config=config, model=m, tokenizer=tok, split=split, smoke=smoke, device=dev,
                      dtype=dtype, report_dir=report_dir, notebook=notebook, model_name=model, data=loaded,
                      retain_model_name=retain_model, threads=n_threads,
                      settings=unlearning)
    if loaded is not None:
        warn_if_unknown(session)
    return session


SMOKE_NOTE = ("SMOKE MODE: a tiny model and data, a few training steps: this run checks that every cell works. Its "
              "numbers mean nothing; the text around them describes the full run (SMOKE = False).")

SMOKE_SIZES = {"forget": 6, "retain": 12, "forget_para": 6, "retain_para": 12, "unknown": 24,
               "retain_perturbed": 12}


def smoke_sized(data: dict) -> dict:
    """A pretrained model's data in smoke mode: the first few questions of each set (numbers then mean nothing;
    the run checks that every cell works)."""
    out = dict(data)
    for name, n in SMOKE_SIZES.items():
        if out.get(name) is not None and hasattr(out[name], "select") and len(out[name]) > n:
            out[name] = out[name].select(range(n))
    return out


def warn_if_unknown(session: Session, margin: float = 0.2) -> float:
    """Warn when the original model barely knows the data file's forget questions (accuracy below chance + margin):
    unlearning what a model never knew measures nothing, and "it stays forgotten" verdicts then hold vacuously.
    Returns the forget accuracy. Chance is 1 / number of choices for multiple-choice rows, else 0."""
    import warnings

    from .evaluate import accuracy

    forget = session.data["forget"]
    acc = accuracy(session.model, session.tokenizer, forget)
    chance = (sum(1 / len(c) for c in forget["choices"]) / len(forget)) if "choices" in forget.column_names else 0.0
    if acc < chance + margin:
        warnings.warn(f"The model answers {acc:.0%} of the forget questions of {session.data['name']} before any "
                      f"unlearning (chance: {chance:.0%}): it does not know them, so unlearning them measures little. "
                      "Use a model fine-tuned on this data (e.g. TOFU's fine-tuned model) as MODEL.", stacklevel=2)
    return acc
