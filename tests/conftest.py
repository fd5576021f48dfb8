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


@pytest.fixture(scope="session")
def tiny_config(cache):
    from unlearn_utils.models import WorldModelConfig

    return WorldModelConfig(**TINY)


@pytest.fixture(scope="session")
def tiny(tiny_config):
    """(world, model, tokenizer) of the tiny world model, built once per session."""
    from unlearn_utils.models import build_world_model

    model, tok = build_world_model(tiny_config, progress=False)
    return tiny_config.world(), model, tok
