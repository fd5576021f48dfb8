"""The notebooks' session: parameters checked first, presets and LR / STEPS / BATCH_SIZE, caching for any model."""

import json

import pytest
import torch

from conftest import TINY
from unlearn_utils.models import save_checked
from unlearn_utils.notebook import start


def test_bad_training_parameters_are_refused_before_any_model(monkeypatch, cache):
    import unlearn_utils.notebook as nb

    def no_model(*a, **k):
        raise AssertionError("a model was loaded before the parameters were checked")

    monkeypatch.setattr(nb, "build_world_model", no_model)
    for bad in (dict(lr=0), dict(lr=float("inf")), dict(steps=2.5), dict(batch_size=-1), dict(steps=True)):
        with pytest.raises(ValueError, match="positive finite"):
            start(True, unlearning=bad, **TINY)


def test_notebook_settings_reach_every_run_and_any_model_is_cached(tiny, tmp_path, monkeypatch):
    """A model other than the world model (here the tiny one saved to a folder) is cached by a fingerprint of its
    weights; the notebook's STEPS / BATCH_SIZE apply where a call sets none."""
    from unlearn_utils.unlearning import methods

    world, model, tok = tiny
    folder = save_checked(model, tok, tmp_path / "my-model")
    rows = [{"split": "forget", "prompt": r["prompt"], "answer": r["answer"]}
            for r in world.facts("forget05", "trained")]
    rows += [{"split": "retain", "prompt": r["prompt"], "answer": r["answer"]}
             for r in world.facts("retain", "trained").select(range(30))]
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps(r) + "\n" for r in rows))
    S = start(True, model=str(folder), data=f"qa:{qa}", retain_model=None,
              unlearning=dict(steps=2, batch_size=4), **TINY)
    assert len(S.model_key) == 16 and S.model_key != S.config.key()
    first = S.unlearned("grad_diff", progress=False)
    assert first.unlearn_config.steps == 2 and first.unlearn_config.batch_size == 4
    assert S.unlearned("grad_diff", steps=3, progress=False).unlearn_config.steps == 3  # the call's own setting wins

    def no_training(*a, **k):
        raise AssertionError("a cached run was trained again")

    monkeypatch.setattr(methods, "unlearn", no_training)
    again = S.unlearned("grad_diff", progress=False)
    for (n, a), (_, b) in zip(first.named_parameters(), again.named_parameters()):
        assert torch.equal(a, b), n
    fresh = S.fresh_model()
    assert fresh is not S.model and torch.equal(next(fresh.parameters()), next(S.model.parameters()))
