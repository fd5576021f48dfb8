"""The notebooks' session: parameters checked first, presets and LR / STEPS / BATCH_SIZE, caching for any model."""

import json

import pytest
import torch

from conftest import TINY
from unlearn_utils.cache import save_checked
from unlearn_utils.session import start


def _question_file(world, folder, n_retain: int):
    """The world's forget05 facts and ``n_retain`` retain facts as a question file (``DATA = "qa:FILE"``)."""
    rows = [{"split": "forget", "prompt": r["prompt"], "answer": r["answer"]}
            for r in world.facts("forget05", "trained")]
    rows += [{"split": "retain", "prompt": r["prompt"], "answer": r["answer"]}
             for r in world.facts("retain", "trained").select(range(n_retain))]
    qa = folder / "qa.jsonl"
    qa.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return qa


def test_bad_training_parameters_are_refused_before_any_model(monkeypatch, cache):
    import unlearn_utils.session as nb

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
    qa = _question_file(world, tmp_path, n_retain=30)
    S = start(True, model=str(folder), data=f"qa:{qa}", retain_model=None,
              unlearning=dict(steps=2, batch_size=4), **TINY)
    assert len(S.model_key) == 16 and S.model_key != S.config.key()
    first, log = S.unlearned("grad_diff", progress=False)
    assert first.unlearn_config.steps == 2 and first.unlearn_config.batch_size == 4 and log.loss.notna().sum() == 2
    assert S.unlearned("grad_diff", steps=3, progress=False)[0].unlearn_config.steps == 3  # the call's own setting wins

    def no_training(*a, **k):
        raise AssertionError("a cached run was trained again")

    monkeypatch.setattr(methods, "unlearn", no_training)
    again, again_log = S.unlearned("grad_diff", progress=False)
    assert again_log.attrs["cached"] and again_log.equals(log)
    for (n, a), (_, b) in zip(first.named_parameters(), again.named_parameters()):
        assert torch.equal(a, b), n
    fresh = S.fresh_model()
    assert fresh is not S.model and torch.equal(next(fresh.parameters()), next(S.model.parameters()))


def test_session_on_the_world_reads_its_split_and_writes_its_report(tiny, tmp_path):
    S = start(True, report_dir=str(tmp_path), notebook="99_test", split="forget05", **TINY)
    world = S.world
    assert S.on_world and S.model_name == "world" and S.model_key == S.config.key()
    assert list(S.forget_set["prompt"]) == list(world.facts("forget05", "trained")["prompt"])
    questions = S.forget_questions()
    assert questions and all(q in set(S.forget_set["prompt"]) for q in questions)
    asked = set(p for p, q in zip(S.forget_set["prompt"], S.forget_set["is_question"]) if q)
    assert set(questions) == asked  # the world's fill-in sentences are left out
    sample = S.forget_questions(limit=3, seed=1)
    assert len(sample) == 3 and sample == [q for q in questions if q in sample]  # a sample, in the original order
    assert sample == S.forget_questions(limit=3, seed=1)
    t, v = S.tv_split()
    assert len(t) and len(v) and not ({(r["person"], r["attribute"]) for r in t}
                                      & {(r["person"], r["attribute"]) for r in v})
    S.record(answer=0.5, nested={"a": 1})
    S.finish()
    saved = json.loads((tmp_path / "results" / "99_test.json").read_text())
    assert saved == {"smoke": True, "answer": 0.5, "nested": {"a": 1}}


def test_session_on_a_question_file_has_no_world_retain_model(tiny, tmp_path):
    world = tiny[0]
    qa = _question_file(world, tmp_path, n_retain=20)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny model does not know its facts: start() says so
        S = start(True, data=f"qa:{qa}", retain_model=None, **TINY)
    assert not S.on_world and S.retain_model is None
    assert len(S.forget_set) == len(world.facts("forget05", "trained")) and len(S.retain_set) == 20
    assert S.eval_data.forget_para is None  # a file without paraphrases: the report card leaves them out


def test_smoke_mode_trains_smoke_sized_runs_whatever_the_cell_asks(tiny, monkeypatch, capsys):
    """In smoke mode a call that sets no steps (notebook 06's audit cell did) trains S.smoke_steps, not the method's
    200; GRUN notebook 04's smoke schedule; steps given by the call or the STEPS parameter still win.
    The banner says the numbers mean nothing."""
    import unlearn_utils.grun as grun
    import unlearn_utils.unlearning as unlearning

    seen = []
    monkeypatch.setattr(unlearning, "cached_unlearn", lambda *a, **k: seen.append(k.get("steps")) or (None, None))
    monkeypatch.setattr(grun, "cached_train_grun", lambda *a, **k: seen.append(k.get("steps")) or (None, None))
    S = start(True, **TINY)
    assert "SMOKE MODE" in capsys.readouterr().out
    S.unlearned("grad_diff")
    S.unlearned("npo_gd", steps=3)
    S.train_grun(S.forget_set, S.retain_set)
    S.train_grun(S.forget_set, S.retain_set, steps=7)
    assert seen == [S.smoke_steps, 3, grun.SCHEDULES["world smoke"]["steps"], 7]
    S_steps = start(True, unlearning=dict(steps=4), **TINY)
    S_steps.unlearned("grad_diff")
    assert seen[-1] == 4
