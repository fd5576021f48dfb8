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


def test_the_learning_rate_holds_the_value_typed(lab):
    """A text box, not a log slider (which snapped 3e-4 to 3.16e-4 in the browser): the value typed is the run's,
    and a value that reached the kernel through JavaScript's number formatting reads as the same rate."""
    import ipywidgets as w

    from unlearn_utils.lab import round_lr

    assert not isinstance(lab.lr, w.FloatLogSlider)
    lab.set(lr=3e-4, method="grad_diff")
    assert lab.lr.value == 3e-4 and lab.settings().lr == 3e-4
    lab.lr.value = 0.00030000000000000003
    assert lab.settings().lr == 3e-4 and round_lr(1.2345678e-5) == 1.235e-5


def test_a_click_while_a_run_is_in_progress_is_refused(lab):
    """ipykernel 7 runs a button's callback on a kernel thread of its own: a click that arrives while a run holds the
    lab is refused (counted, said in the status line), never a second run at once."""
    before, refused = len(lab.history), lab.refused_clicks
    with lab._lock:  # what a run in progress holds
        assert lab.busy
        lab.run_button.click()
    assert len(lab.history) == before and lab.refused_clicks == refused + 1
    assert "Click ignored" in lab.status.value and not lab.busy


def test_a_double_click_makes_one_run(lab, monkeypatch):
    """A kernel that handles callbacks one after another queues the second click of a double click until the run
    ends: it is refused; a click after that is a new run."""
    import time

    from unlearn_utils import lab as lab_module

    lab.set(method="grad_diff", steps=2, lora=False, attack="none")
    before, refused = len(lab.history), lab.refused_clicks
    lab.run_button.click()
    lab.run_button.click()
    assert len(lab.history) == before + 1 and lab.refused_clicks == refused + 1
    time.sleep(lab_module.DOUBLE_CLICK_SECONDS + 0.05)
    lab.run_button.click()
    assert len(lab.history) == before + 2 and "idle: run" in lab.status.value


def test_a_call_from_a_cell_waits_for_the_run_in_progress(lab):
    import threading

    lab.set(method="grad_diff", steps=2, lora=False, attack="none")
    before = len(lab.history)
    lab._lock.acquire()  # a button's run in progress
    worker = threading.Thread(target=lab.run)
    worker.start()
    worker.join(1.0)
    assert worker.is_alive() and "waiting" in lab.status.value and len(lab.history) == before
    lab._lock.release()
    worker.join(120)
    assert not worker.is_alive() and len(lab.history) == before + 1


def test_the_history_fits_the_page_and_formats_numbers(lab):
    from unlearn_utils.lab import history_html

    table = lab.history_table()
    assert not table.empty
    page = history_html(table)
    assert "overflow-x:auto" in page and "white-space:normal" in page
    assert "3e-04" in page or "1e-03" in page          # the learning rate as a person writes it
    assert "forget acc" in page and "%" in page          # short headers, shares in per cent
    assert history_html(table.iloc[:0]) == ""
