import copy

import pytest
import torch

from unlearn_utils import evaluate as ev
from unlearn_utils.unlearning import METHODS, load_unlearned, save_unlearned, unlearn


@pytest.fixture(scope="module")
def splits(tiny):
    world, model, tok = tiny
    return world.facts("forget05", "trained"), world.facts("retain", "trained").select(range(120))


def forget_prob(model, tok, forget):
    return float(ev.answer_scores(model, tok, list(forget["prompt"]), list(forget["answer"]))["prob"].mean())


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_and_moves_the_forget_set(tiny, splits, method):
    world, model, tok = tiny
    forget, retain = splits
    before = forget_prob(model, tok, forget) / forget_prob(model, tok, retain)
    out, log = unlearn(model, tok, forget, retain, method, steps=6, lr=3e-3, progress=False)
    assert len(log) == 6 and log["loss"].notna().all()
    assert out is not model, "the input model is copied"
    changed = any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), out.state_dict().values()))
    assert changed
    if method != "rmu":  # RMU acts on activations; its effect on answer probability is indirect
        # the forget answers lose probability relative to the retain answers (the tiny model knows little,
        # so retain terms can raise every probability at once)
        assert forget_prob(out, tok, forget) / forget_prob(out, tok, retain) < before


@pytest.mark.parametrize("method", ["grad_diff", "npo_gd", "rmu"])
def test_lora_trains_only_adapters(tiny, splits, method):
    world, model, tok = tiny
    forget, retain = splits
    out, _ = unlearn(model, tok, forget, retain, method, steps=4, lora=True, progress=False)
    trainable = [n for n, p in out.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    base = out.get_base_model().state_dict()
    for name, w in model.state_dict().items():
        assert torch.equal(w, base[name.replace(".weight", ".base_layer.weight")] if name.replace(
            ".weight", ".base_layer.weight") in base else base[name]), name
    assert forget_prob(out, tok, forget) != pytest.approx(forget_prob(model, tok, forget), abs=0)


@pytest.mark.parametrize("lora", [False, True])
def test_save_and_reload_gives_identical_metrics(tiny, splits, tmp_path, lora):
    world, model, tok = tiny
    forget, retain = splits
    out, _ = unlearn(model, tok, forget, retain, "grad_diff", steps=4, lora=lora, progress=False)
    folder = save_unlearned(out, tok, tmp_path / "unlearned")
    again, log = load_unlearned(folder)
    assert again.unlearn_config.method == "grad_diff" and log.attrs["config"]["lora"] == lora
    a = ev.report_card(out, tok, world, "forget05", mia=False)["value"].to_numpy()
    b = ev.report_card(again, tok, world, "forget05", mia=False)["value"].to_numpy()
    assert a == pytest.approx(b, abs=1e-6)


def test_trajectory_and_keep_best(tiny, splits):
    world, model, tok = tiny
    forget, retain = splits
    calls = []

    def eval_fn(m):
        calls.append(1)
        return {"forget_prob": forget_prob(m, tok, forget)}

    out, log = unlearn(model, tok, forget, retain, "ga", steps=6, lr=1e-2, eval_fn=eval_fn, eval_every=2,
                       keep_best=lambda row: row["step"] == 2, progress=False)
    evals = log.dropna(subset=["forget_prob"])
    assert evals["step"].tolist() == [0, 2, 4, 6] and len(calls) == 4
    assert forget_prob(out, tok, forget) == pytest.approx(evals.set_index("step").loc[2, "forget_prob"], abs=1e-6)


def test_bad_input(tiny, splits):
    world, model, tok = tiny
    forget, retain = splits
    with pytest.raises(ValueError, match="Unknown unlearning method"):
        unlearn(model, tok, forget, retain, "forget_harder")
    with pytest.raises(ValueError, match="overlap"):
        unlearn(model, tok, forget, world.facts("forget10", "trained"), "ga")
    with pytest.raises(ValueError, match="forget split is empty"):
        unlearn(model, tok, forget.select([]), retain, "ga")
    with pytest.raises(ValueError, match="learning rate"):
        unlearn(model, tok, forget, retain, "ga", lr=0)
    with pytest.raises(ValueError, match="learning rate"):
        unlearn(model, tok, forget, retain, "ga", lr=-1e-4)
    with pytest.raises(ValueError, match="steps"):
        unlearn(model, tok, forget, retain, "ga", steps=0)
    with pytest.raises(TypeError, match="Unknown setting"):
        unlearn(model, tok, forget, retain, "ga", learning_rate=1e-3)
    with pytest.raises(IndexError, match="out of range"):
        unlearn(model, tok, forget, retain, "rmu", layer=99, steps=1)


@pytest.mark.parametrize("setting, value", [
    ("lr", float("inf")), ("lr", float("nan")), ("retain_weight", float("nan")), ("retain_weight", -1.0),
    ("beta", float("inf")), ("beta", 0.0), ("gamma", float("nan")), ("steering_coeff", float("inf")),
    ("weight_decay", float("nan")), ("batch_size", 0), ("batch_size", -4), ("batch_size", 2.5),
    ("batch_size", True), ("steps", True), ("lora_rank", 0), ("only_modules", "model.layers.0.mlp"),
    ("only_modules", ())])
def test_impossible_settings_are_refused_before_any_work(tiny, splits, monkeypatch, setting, value):
    """lr=inf (or a NaN weight) was accepted and trained a NaN model; a string for only_modules was read letter by
    letter. Each is a ValueError naming the setting and a fix, before the model is copied or anything cached."""
    from unlearn_utils.unlearning import methods

    world, model, tok = tiny
    forget, retain = splits

    def started(*a, **k):
        raise AssertionError("work started before the settings were checked")

    monkeypatch.setattr(methods, "check_splits", started)
    monkeypatch.setattr(methods, "cached", started)
    with pytest.raises(ValueError, match=rf"{setting}.* must be .*got .*(e\.g\.|Use|write|None)"):
        unlearn(model, tok, forget, retain, "npo_gd", progress=False, **{setting: value})
    with pytest.raises(ValueError, match=setting):
        methods.cached_unlearn(model, tok, world, "forget05", "npo_gd", model_key="any", progress=False,
                               **{setting: value})


def test_a_diverging_run_raises_and_caches_nothing(tiny, tiny_config, monkeypatch, tmp_path):
    """A learning rate far too large turns the loss into NaN: the run stops there with the step and the advice to
    lower the learning rate, and no cache entry is written (a NaN model would be loaded as a result later)."""
    from unlearn_utils.training import NonFiniteLossError
    from unlearn_utils.unlearning import methods

    world, model, tok = tiny
    monkeypatch.setenv("UNLEARN_KIT_CACHE", str(tmp_path))
    with pytest.raises(NonFiniteLossError, match=r"step \d+ of 4: the loss is nan.*Lower the learning rate") as err:
        methods.cached_unlearn(model, tok, world, "forget05", "grad_diff", model_key=tiny_config.key(),
                               progress=False, steps=4, lr=1e10)
    assert err.value.lr == 1e10
    entries = [p for p in tmp_path.rglob("*") if p.is_dir() and p.parent != tmp_path]
    assert entries == [], "nothing is cached"
    assert all(torch.isfinite(p).all() for p in model.parameters()), "the input model is untouched"


def test_save_unlearned_refuses_non_finite_weights(tiny, tmp_path):
    world, model, tok = tiny
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="layers.0.mlp.down_proj.weight holds NaN or infinite.*lower learning rate"):
        save_unlearned(broken, tok, tmp_path / "broken")
    assert list(tmp_path.iterdir()) == [], "nothing is written"


def test_cached_unlearn_keeps_model_and_trajectory(tiny, tiny_config, monkeypatch):
    import pandas as pd

    from unlearn_utils.evaluate import eval_data, trajectory_metrics
    from unlearn_utils.unlearning import methods

    world, model, tok = tiny
    traj = trajectory_metrics(tok, eval_data(world, "forget05"))
    kw = dict(model_key=tiny_config.key(), progress=False, steps=6, lr=1e-3, seed=3)
    first, first_log = methods.cached_unlearn(model, tok, world, "forget05", "grad_diff", eval_fn=traj, eval_every=3,
                                              log_name="t3", **kw)
    evals = first_log.dropna(subset=["forget_accuracy"])
    assert list(evals.step) == [0, 3, 6] and first_log.attrs["seconds"] > first_log.attrs["eval_seconds"] > 0
    assert not first_log.attrs["cached"]
    # evaluating during training does not change training: the same settings without a trajectory give the same model
    plain, _ = methods.cached_unlearn(model, tok, world, "forget05", "grad_diff", progress=False, steps=6,
                                      lr=1e-3, seed=3)
    _, plain_log = methods.cached_unlearn(model, tok, world, "forget05", "grad_diff", **kw)  # no trajectory asked
    assert plain_log.attrs["cached"] and "forget_accuracy" in plain_log  # the entry's trajectory is its log
    for (n, a), (_, b) in zip(first.named_parameters(), plain.named_parameters()):
        assert torch.equal(a, b), n

    def no_training(*a, **k):
        raise AssertionError("a cached model and trajectory must not be trained again")

    monkeypatch.setattr(methods, "unlearn", no_training)
    again, again_log = methods.cached_unlearn(model, tok, world, "forget05", "grad_diff", eval_fn=traj, eval_every=3,
                                              log_name="t3", **kw)
    pd.testing.assert_frame_equal(again_log, first_log, check_dtype=False)
    assert again_log.attrs["seconds"] == pytest.approx(first_log.attrs["seconds"]) and again_log.attrs["cached"]
    for (n, a), (_, b) in zip(first.named_parameters(), again.named_parameters()):
        assert torch.equal(a, b), n
    with pytest.raises(ValueError, match="log_name"):
        methods.cached_unlearn(model, tok, world, "forget05", "grad_diff", eval_fn=traj, eval_every=3, **kw)
    with pytest.raises(AssertionError, match="must not be trained"):   # another trajectory is not in the cache
        methods.cached_unlearn(model, tok, world, "forget05", "grad_diff", eval_fn=traj, eval_every=2,
                               log_name="t2", **kw)


def test_two_processes_asking_for_one_model_train_it_once(tiny, tiny_config, monkeypatch):
    """Two notebooks side by side (here: two threads) that need the same unlearned model: one trains it, the other
    waits on the cache lock and loads the same weights."""
    import threading

    from unlearn_utils.unlearning import methods

    world, model, tok = tiny
    trained, real_unlearn = [], methods.unlearn

    def counting(*a, **k):
        trained.append(1)
        return real_unlearn(*a, **k)

    monkeypatch.setattr(methods, "unlearn", counting)
    out = {}

    def ask(i):
        out[i], _ = methods.cached_unlearn(model, tok, world, "forget05", "npo", model_key=tiny_config.key(),
                                           progress=False, steps=4, lr=1e-3, seed=11)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(trained) == 1 and set(out) == {0, 1}
    for (n, a), (_, b) in zip(out[0].named_parameters(), out[1].named_parameters()):
        assert torch.equal(a, b), n


def test_cached_trajectory_that_was_modified_is_not_used(tiny, tiny_config):
    from unlearn_utils.evaluate import eval_data, trajectory_metrics
    from unlearn_utils.cache import cache_dir
    from unlearn_utils.unlearning import methods

    world, model, tok = tiny
    traj = trajectory_metrics(tok, eval_data(world, "forget05"))
    kw = dict(model_key=tiny_config.key(), progress=False, steps=4, lr=1e-3, seed=5, eval_fn=traj, eval_every=2,
              log_name="t2")
    methods.cached_unlearn(model, tok, world, "forget05", "grad_diff", **kw)
    target = next(p for p in (cache_dir() / "unlearned").glob("*/log-t2.csv")
                  if '"seed": 5' in (p.parent / "settings.json").read_text())
    target.write_text(target.read_text().replace("0", "9"))      # tampered with
    with pytest.warns(UserWarning, match="unusable"):
        _, again_log = methods.cached_unlearn(model, tok, world, "forget05", "grad_diff", **kw)
    assert list(again_log.dropna(subset=["forget_accuracy"]).step) == [0, 2, 4]


def test_reference_nll_is_reused_only_for_batches_of_the_same_shape(tiny, splits):
    from unlearn_utils.training import answer_positions, logits_at, pad_batch
    from unlearn_utils.unlearning import losses as L
    from unlearn_utils.data import encode_examples
    from unlearn_utils.unlearning.methods import ReferenceNLL

    world, model, tok = tiny
    forget, _ = splits
    seqs, masks = encode_examples(tok, forget.to_list())
    calls = []

    def reference_logits(batch):
        calls.append(tuple(batch["input_ids"].shape))
        with torch.no_grad():
            return logits_at(model, batch["input_ids"], batch["attention_mask"], batch["positions"])

    def batch(idx, pad_to=None):
        b = pad_batch([seqs[i] for i in idx], 0, [masks[i] for i in idx])
        if pad_to is not None:  # pad further: same rows, another shape
            extra = pad_to - b["input_ids"].shape[1]
            b = {k: torch.nn.functional.pad(v, (0, extra), value=-100 if k == "labels" else 0) for k, v in b.items()}
        b["positions"], b["answer_labels"] = answer_positions(b["labels"])
        return b

    ref = ReferenceNLL(reference_logits)
    first = ref(batch([0, 1, 2, 3]), [0, 1, 2, 3])
    fresh = L.sequence_nll(reference_logits(batch([0, 1, 2, 3])), batch([0, 1, 2, 3])["answer_labels"])[0]
    assert torch.equal(first, fresh)
    calls.clear()
    again = ref(batch([3, 2, 1, 0]), [3, 2, 1, 0])
    assert calls == [], "every example known, same shape: no reference forward"
    assert torch.equal(again, first.flip(0))
    ref(batch([0, 1, 2, 4]), [0, 1, 2, 4])
    assert len(calls) == 1, "one new example: the reference runs on the batch"
    longer = batch([0, 1, 2, 3], pad_to=batch([0, 1, 2, 3])["input_ids"].shape[1] + 3)
    ref(longer, [0, 1, 2, 3])
    assert len(calls) == 2, "another shape: computed again, not reused"
    assert ref(batch([0]), [0], kind="refusal") is not None and len(calls) == 3, "kinds are kept apart"


@pytest.mark.parametrize("method", ["npo_gd", "idk_dpo"])
def test_reusing_reference_values_changes_no_number(tiny, splits, method, reference_reuse):
    """The same run with the reference recomputed at every step gives the same weights to the bit."""
    world, model, tok = tiny
    forget, retain = splits
    kept, fresh, forwards = reference_reuse(lambda: unlearn(model, tok, forget, retain, method, steps=12,
                                                            progress=False)[0])
    calls_per_step = 2 if method == "idk_dpo" else 1  # DPO: the refusal and the true answer
    assert forwards[False] < forwards[True] == 12 * calls_per_step, "reference values were reused"
    for (name, a), b in zip(kept.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_rmu_reads_the_steered_layer_without_running_the_layers_above(family):
    import types

    from test_arch import L, tiny_model

    from unlearn_utils.arch import get_adapter
    from unlearn_utils.unlearning.methods import _RMU

    model = tiny_model(family)
    batch = {"input_ids": torch.randint(1, 64, (3, 7)), "attention_mask": torch.ones(3, 7, dtype=torch.long)}
    batch["attention_mask"][0, 5:] = 0
    with torch.no_grad():
        expected = model(**batch, output_hidden_states=True).hidden_states
    adapter = get_adapter(model)
    ran = []
    for i in range(L):
        adapter.layer(model, i).register_forward_hook(lambda m, inp, out, i=i: ran.append(i))
    for layer in range(L):
        rmu = types.SimpleNamespace(adapter=adapter, layer=layer)
        ran.clear()
        with torch.no_grad():
            h = _RMU.hidden(rmu, model, batch)
        assert torch.equal(h, expected[layer + 1]), f"layer {layer}"
        assert ran == list(range(layer + 1)), "the layers above the steered one are not run"


def test_rmu_early_exit_with_lora_keeps_gradients():
    import types

    from peft import LoraConfig, get_peft_model
    from test_arch import tiny_model

    from unlearn_utils.arch import get_adapter
    from unlearn_utils.unlearning.methods import _RMU

    model = get_peft_model(tiny_model("llama"), LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    batch = {"input_ids": torch.randint(1, 64, (2, 6)), "attention_mask": torch.ones(2, 6, dtype=torch.long)}
    rmu = types.SimpleNamespace(adapter=get_adapter(model), layer=1)
    expected = model(**batch, output_hidden_states=True).hidden_states[2]
    h = _RMU.hidden(rmu, model, batch)
    assert torch.equal(h, expected)
    h.pow(2).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "lora_" in n}
    below = [g for n, g in grads.items() if ".layers.1." in n or ".layers.0." in n]
    above = [g for n, g in grads.items() if ".layers.2." in n]
    assert below and all(g is not None and g.abs().sum() > 0 for g in below), "adapters up to the layer get gradients"
    assert above and all(g is None for g in above), "adapters above it are not in the graph"
