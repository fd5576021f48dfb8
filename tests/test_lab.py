"""The what-if lab's callbacks, driven headless (no browser): widgets set by code, the Run button clicked."""

import pytest

from unlearn_utils.lab import ATTACKS, LabSettings, WhatIfLab


@pytest.fixture(scope="module")
def lab(knowing, knowing_config):
    from unlearn_utils.models import build_world_model

    world, model, tok = knowing
    return WhatIfLab(model, tok, world, retain_model=lambda split: build_world_model(
        knowing_config, exclude_split=split, progress=False)[0], defaults=LabSettings(split="forget10", eval_every=5))


def test_settings_come_from_the_widgets(lab):
    lab.set(method="npo_gd", steps=30, bits=8, attack="none", lora=True)
    s = lab.settings()
    assert (s.method, s.steps, s.bits, s.attack, s.lora) == ("npo_gd", 30, 8, "none", True)
    with pytest.raises(KeyError, match="no control"):
        lab.set(temperature=1.0)


def test_bad_settings_are_shown_and_raised(lab):
    before = len(lab.history)
    with pytest.raises(ValueError, match="learning rate must be positive"):
        lab.run(LabSettings(lr=0.0))
    assert "Cannot run" in lab.verdicts.value
    with pytest.raises(ValueError, match="Unknown method"):
        LabSettings(method="forgetful").check()
    with pytest.raises(ValueError, match="bits must be"):
        LabSettings(bits=5).check()
    assert len(lab.history) == before and not lab.run_button.disabled


def test_clicking_run_unlearns_draws_and_audits(lab, knowing):
    world, model, tok = knowing
    lab.set(split="forget10", method="grad_diff", steps=12, lr=1e-3, lora=False, bits=4, attack="quantization")
    before = len(lab.history)
    lab.run_button.click()                      # what a learner's click does
    assert len(lab.history) == before + 1
    run = lab.last
    assert list(run["trajectory"].step) == [0, 5, 10, 12]
    assert lab.progress.value == 12 and lab.progress.description == "done"
    assert not lab.run_button.disabled
    v = run["audit"].verdicts
    assert list(v.probe) == ["quantization"] and list(v.setting) == ["4-bit"]
    assert "4-bit" in lab.verdicts.value
    rec = run["record"]
    assert rec["method"] == "grad_diff" and rec["forget_accuracy"] == run["trajectory"].forget_accuracy.iloc[-1]
    assert "quantization 4-bit: back" in rec
    assert sum(p.numel() for p in run["model"].parameters()) == sum(p.numel() for p in model.parameters())


def test_a_lora_run_with_relearning_is_added_to_the_history(lab):
    lab.set(method="npo_gd", steps=6, lora=True, attack="relearning (RTT)")
    lab.run()
    table = lab.history_table()
    assert table.iloc[-1]["lora"] and table.iloc[-1]["method"] == "npo_gd"
    assert list(lab.last["audit"].verdicts.probe) == ["relearning"]
    assert not hasattr(lab.last["model"], "merge_and_unload")   # LoRA merged before the audit


def test_every_attack_names_known_probes():
    from unlearn_utils.audit import PROBES

    for probes in ATTACKS.values():
        assert set(probes) <= set(PROBES)


def test_a_run_trained_before_is_loaded_from_the_cache(knowing, knowing_config):
    world, model, tok = knowing
    cached_lab = WhatIfLab(model, tok, world, model_key=knowing_config.key(),
                           defaults=LabSettings(split="forget10", eval_every=4))
    cached_lab.set(method="grad_diff", steps=8, lr=1e-3, lora=False, attack="none")
    first = cached_lab.run()
    again = cached_lab.run()
    assert [r["cached"] for r in cached_lab.history] == [False, True]
    assert list(again["trajectory"].step) == [0, 4, 8]  # the cached trajectory, drawn at once
    assert again["trajectory"].equals(first["trajectory"][again["trajectory"].columns])
    for a, b in zip(first["model"].parameters(), again["model"].parameters()):
        assert (a == b).all()


def test_run_each_sets_the_widgets_run_by_run(lab, monkeypatch):
    """One run per position of the lists (in step, as zip: the shortest decides), single values in every run."""
    seen = []
    monkeypatch.setattr(lab, "run", lambda: seen.append(lab.settings()) or {"run": len(seen)})
    runs = lab.run_each(method=["npo_gd", "grad_diff"], lora=[True, False, True], lr=(1e-4, 2e-3), steps=7,
                        attack="none")
    assert runs == [{"run": 1}, {"run": 2}]
    assert [(s.method, s.lora, s.steps, s.attack) for s in seen] == [("npo_gd", True, 7, "none"),
                                                                     ("grad_diff", False, 7, "none")]
    assert [s.lr for s in seen] == pytest.approx([1e-4, 2e-3], rel=1e-6)
    assert len(lab.run_each(steps=9)) == 1 and seen[-1].steps == 9       # no list: one run
    assert lab.run_each(method=[], steps=9) == []                          # an empty list: no run


def test_run_each_makes_real_runs(lab):
    before = len(lab.history)
    runs = lab.run_each(method=["grad_diff", "npo_gd"], steps=3, lora=False, attack="none")
    assert len(lab.history) == before + 2 and [r["settings"].method for r in runs] == ["grad_diff", "npo_gd"]
    assert list(lab.history_table().method[-2:]) == ["grad_diff", "npo_gd"] and runs[-1] is lab.last
