"""Relearning attacks: recovery formulas by hand, RTT input checks, and that relearning trains what it should."""

import pytest

from unlearn_utils import relearn as RL
from unlearn_utils.data import weights_fingerprint


def test_recovery_formulas_by_hand():
    assert RL.recovery_rate(0.45, 0.9) == pytest.approx(0.5)
    assert RL.recovery_above_floor(0.6, 0.1, 0.9) == pytest.approx(0.5 / 0.8)
    assert RL.recovery_above_floor(0.1, 0.1, 0.9) == 0.0
    assert RL.recovery_above_floor(0.9, 0.1, 0.9) == pytest.approx(1.0)
    assert RL.recovery_above_floor(0.05, 0.1, 0.9) < 0
    with pytest.raises(ValueError, match="nothing to recover"):
        RL.recovery_rate(0.3, 0.0)
    with pytest.raises(ValueError, match="floor reaches the ceiling"):
        RL.recovery_above_floor(0.3, 0.5, 0.5)


def test_tv_split_shares_no_fact(tiny):
    world, _, _ = tiny
    for split in ("forget05", "forget10"):
        T, V = world.tv_split(split)
        t = set(zip(T["person"], T["attribute"]))
        v = set(zip(V["person"], V["attribute"]))
        assert t and v and not t & v
        assert {p for p, _ in t} == {p for p, _ in v} == set(world.forget_people(split))


def test_rtt_rejects_empty_or_overlapping_sets(tiny):
    world, model, tok = tiny
    T, V = world.tv_split("forget10")
    with pytest.raises(ValueError, match="both must be non-empty"):
        RL.rtt({"m": model}, tok, T.select([]), V)
    with pytest.raises(ValueError, match="both must be non-empty"):
        RL.rtt({"m": model}, tok, T, V.select([]))
    with pytest.raises(ValueError, match="share"):
        RL.rtt({"m": model}, tok, T, T)
    with pytest.raises(ValueError, match="empty"):
        RL.relearn(model, tok, [])


def test_relearning_fits_t_and_logs_every_epoch(tiny):
    world, model, tok = tiny
    T, V = world.tv_split("forget10")
    res = RL.rtt({"m": model}, tok, T, V, epochs=2, lr=3e-3, progress=False)
    assert list(res.epoch) == [0, 1, 2]
    assert res["T"].iloc[-1] > res["T"].iloc[0]  # the attack learns what it is trained on
    before = {k: v.clone() for k, v in model.state_dict().items()}
    RL.relearn(model, tok, T, epochs=1, progress=False)
    assert all((before[k] == v).all() for k, v in model.state_dict().items())  # input model untouched


def test_rtt_runs_the_same_attack_on_the_same_weights_once(tiny, monkeypatch):
    import copy

    import torch

    world, model, tok = tiny
    T, V = world.tv_split("forget10")
    first = RL.rtt({"a": model}, tok, T, V, epochs=1, lr=3e-3, progress=False)
    calls = []
    real = RL.relearn
    monkeypatch.setattr(RL, "relearn", lambda *a, **k: calls.append(1) or real(*a, **k))
    twin = copy.deepcopy(model)  # same weights, another object: the attack is not run again
    again = RL.rtt({"b": twin}, tok, T, V, epochs=1, lr=3e-3, progress=False)
    assert calls == [] and again.drop(columns="model").equals(first.drop(columns="model"))
    with torch.no_grad():
        next(twin.parameters()).add_(1e-3)  # other weights: a new attack
    RL.rtt({"b": twin}, tok, T, V, epochs=1, lr=3e-3, progress=False)
    RL.rtt({"a": model}, tok, T, V, epochs=1, lr=1e-3, progress=False)  # another attack on the first weights
    assert calls == [1, 1]
    assert weights_fingerprint(model) != weights_fingerprint(twin)


def test_rtt_curves_are_kept_on_disk_for_other_processes(tiny, monkeypatch, tmp_path):
    """Another process (cleared memory) loads the saved curve; a damaged or half-written entry is said so and
    computed again."""
    monkeypatch.setenv("UNLEARN_KIT_CACHE", str(tmp_path))
    world, model, tok = tiny
    T, V = world.tv_split("forget10")
    first = RL.rtt({"a": model}, tok, T, V, epochs=1, lr=2e-3, progress=False)
    (saved,) = (tmp_path / "rtt").glob("*/log.csv")
    RL._RTT_DONE.clear()
    calls, real = [], RL.relearn
    monkeypatch.setattr(RL, "relearn", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = RL.rtt({"a": model}, tok, T, V, epochs=1, lr=2e-3, progress=False)
    assert calls == [] and again.equals(first)
    saved.write_text(saved.read_text().replace(",0.", ",1.", 1))  # other numbers: the checksum says so
    RL._RTT_DONE.clear()
    with pytest.warns(UserWarning, match="checksum"):
        third = RL.rtt({"a": model}, tok, T, V, epochs=1, lr=2e-3, progress=False)
    assert calls == [1] and third.equals(first)
    (saved.parent / "manifest.json").unlink()  # a write that never finished
    RL._RTT_DONE.clear()
    with pytest.warns(UserWarning, match="unusable"):
        RL.rtt({"a": model}, tok, T, V, epochs=1, lr=2e-3, progress=False)
    assert calls == [1, 1]


def _rtt_log():
    """A hand-made RTT log: three models, epochs 0-2, in the order the attack ran them."""
    import pandas as pd

    v = {"original": [0.8, 0.85, 0.9], "retain model": [0.0, 0.1, 0.2], "ga": [0.0, 0.4, 0.6], "flat": [0.9, 0.9, 0.9]}
    return pd.DataFrame([{"epoch": e, "T": 0.5, "V": acc[e], "model": m} for m, acc in v.items() for e in range(3)])


def test_v_curves_series_floor_and_ceiling_by_hand():
    curves = RL.v_curves(_rtt_log())
    assert list(curves.columns) == ["original", "retain model", "ga", "flat"] and list(curves.index) == [0, 1, 2]
    assert curves.loc[2, "ga"] == 0.6
    series = RL.as_series(curves)
    assert list(series) == list(curves.columns) and series["ga"] == ([0, 1, 2], [0.0, 0.4, 0.6])
    assert RL.floor_and_ceiling(curves) == (0.2, 0.8)  # floor after the attack, ceiling before it
    floor, ceiling = RL.floor_and_ceiling(curves.drop(columns="retain model"))
    assert floor != floor and ceiling == 0.8  # no retain model: no floor


def test_recovery_table_by_hand_and_undefined_rates(capsys):
    curves = RL.v_curves(_rtt_log())
    rates = RL.recovery_table(curves, ["ga", "flat"], 0.2, 0.8)
    assert list(rates.index) == ["ga", "flat"]
    assert list(rates.columns) == ["V before", "V after", "recovery (paper: after / original)", "recovery above floor"]
    assert rates.loc["ga", "V before"] == 0.0 and rates.loc["ga", "V after"] == 0.6
    assert rates.loc["ga", "recovery (paper: after / original)"] == pytest.approx(0.75)
    assert rates.loc["ga", "recovery above floor"] == pytest.approx(0.4 / 0.6)
    assert rates.loc["flat", "recovery above floor"] == pytest.approx(0.7 / 0.6)
    assert capsys.readouterr().out == ""
    undefined = RL.recovery_table(curves, ["ga"], 0.8, 0.8)  # the floor reaches the ceiling
    assert undefined.loc["ga", "recovery above floor"] != undefined.loc["ga", "recovery above floor"]
    assert undefined.loc["ga", "recovery (paper: after / original)"] == pytest.approx(0.75)
    assert "undefined: " in capsys.readouterr().out
    zero = RL.recovery_table(curves, ["ga"], float("nan"), 0.0)  # no ceiling and no floor
    assert zero.isna().loc["ga"].tolist() == [False, False, True, True]
    assert "nothing to recover" in capsys.readouterr().out


def test_facts_like_follows_the_forget_sets_categories():
    pool = [{"prompt": f"q{i}", "answer": "a", "category": c} for i, c in enumerate("aaaaabbbbbccccc")]
    like = [{"category": "a"}, {"category": "a"}, {"category": "b"}]
    rows = RL.facts_like(pool, like, 3, seed=1)
    assert sorted(r["category"] for r in rows) == ["a", "a", "b"]
    assert len({r["prompt"] for r in RL.facts_like(pool, like, 12, seed=1)}) == 12  # filled from other categories
    assert RL.facts_like(pool, like, 3, seed=1) == rows  # deterministic
    with pytest.raises(ValueError, match="pool holds 15"):
        RL.facts_like(pool, like, 16)


def test_unknown_facts_floor_attacks_disjoint_unknown_facts(tiny):
    """The floor is the same attack on facts the model does not know: T and V disjoint, V starts unknown."""
    world, model, tok = tiny
    from unlearn_utils import evaluate as ev

    facts = world.facts("retain", "trained").to_list()
    known = ev.answer_scores(model, tok, [r["prompt"] for r in facts], [r["answer"] for r in facts])["correct"]
    unknown = [{"prompt": r["prompt"], "answer": r["answer"], "category": r["attribute"]}
               for r, k in zip(facts, known) if not k][:40]
    log = RL.unknown_facts_floor(model, tok, unknown, like=unknown[:4], n_t=6, n_v=6, epochs=1, lr=3e-3,
                                 progress=False)
    assert set(log.model) == {"unknown facts (floor)"} and list(log.epoch) == [0, 1]
    assert log["V"].iloc[0] == 0.0  # nothing of V is known before the attack
    with pytest.raises(ValueError, match="at least 1"):
        RL.unknown_facts_floor(model, tok, unknown, unknown, n_t=0, n_v=3)
