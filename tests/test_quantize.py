import pytest
import torch

from unlearn_utils.quantize import load_bnb, quantization_step, quantize_model, quantize_tensor


@pytest.mark.parametrize("bits", [8, 4, 3])
@pytest.mark.parametrize("group", [None, 16])
@pytest.mark.parametrize("symmetric", [True, False])
def test_error_within_half_a_step(bits, group, symmetric):
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(bits))
    q = quantize_tensor(w, bits, group, symmetric)
    step = quantization_step(w, bits, group, symmetric)
    assert ((q - w).abs() <= step / 2 + 1e-6).all()
    # the grid really has at most 2^bits levels per group
    g = q.reshape(8, -1, group or 64)
    assert max(len(torch.unique(g[i, j])) for i in range(8) for j in range(g.shape[1])) <= 2 ** bits


def test_bad_bits_and_group():
    w = torch.randn(4, 48)
    with pytest.raises(ValueError, match="Unsupported bit width"):
        quantize_tensor(w, 1)
    with pytest.raises(ValueError, match="does not divide"):
        quantize_tensor(w, 4, group_size=32)


def test_quantize_model_keeps_copy_and_embeddings(tiny):
    world, model, tok = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = quantize_model(model, 4, group_size=32)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), "the original is untouched"
    qs = q.state_dict()
    assert torch.equal(qs["model.embed_tokens.weight"], before["model.embed_tokens.weight"])
    assert torch.equal(qs["lm_head.weight"], before["lm_head.weight"])
    assert not torch.equal(qs["model.layers.0.mlp.down_proj.weight"], before["model.layers.0.mlp.down_proj.weight"])
    # 8-bit barely changes what the model says
    x = torch.tensor([[1, 5, 6, 7, 8]])
    q8 = quantize_model(model, 8, group_size=32)
    assert (q8(x).logits - model(x).logits).abs().max() < 0.05


@pytest.mark.parametrize("bits,kind", [(8, "nf4"), (4, "nf4"), (4, "fp4")])
def test_bitsandbytes_on_cpu(tiny, bits, kind):
    world, model, tok = tiny
    q = load_bnb(model, bits, kind, device="cpu")
    name = type(q.model.layers[0].mlp.down_proj).__name__
    assert name == ("Linear8bitLt" if bits == 8 else "Linear4bit")
    x = torch.tensor([[1, 5, 6, 7, 8]])
    diff = (q(x).logits.float() - model(x).logits).abs().max().item()
    assert 0 < diff < 1.0
    with pytest.raises(ValueError, match="Unsupported bit width"):
        load_bnb(model, 3)


def test_change_in_steps_and_codes(tiny):
    import copy

    import torch

    from unlearn_utils import quantize as Q

    world, model, tok = tiny
    same = Q.change_in_steps(model, copy.deepcopy(model), 4, 32)
    assert (same["median"] == 0).all() and (same.changed_after_quant == 0).all() and (same.moved == 0).all()
    other = copy.deepcopy(model)
    w = other.model.layers[0].mlp.down_proj.weight
    step = Q.quantization_step(w.detach(), 4, 32)
    with torch.no_grad():
        w.add_(3 * step)  # every weight moves by 3 steps (capped by the grid at the group's extreme)
    ch = Q.change_in_steps(model, other, 4, 32).set_index("module")
    assert ch.loc["model.layers.0.mlp.down_proj", "median"] == pytest.approx(3.0, rel=1e-3)
    assert ch.loc["model.layers.0.mlp.down_proj", "changed_after_quant"] > 0.5
    assert ch.drop("model.layers.0.mlp.down_proj").changed_after_quant.max() == 0
    sample = Q.steps_histogram(model, other, 4, 32)
    assert sample.max() == pytest.approx(3.0, rel=1e-3)


def test_salient_modules_and_only_modules_training(tiny):
    from unlearn_utils import quantize as Q
    from unlearn_utils.unlearning import unlearn

    world, model, tok = tiny
    forget = world.facts("forget10", "trained")
    table = Q.salient_modules(model, tok, forget, fraction=0.25)
    assert table.grad_norm.is_monotonic_decreasing and table.selected.sum() == round(0.25 * len(table))
    assert all(p.grad is None for p in model.parameters())  # gradients cleaned up
    chosen = tuple(table[table.selected].module)
    out, _ = unlearn(model, tok, forget, world.facts("retain", "trained", "forget10"), "grad_diff",
                     only_modules=chosen, steps=3, progress=False)
    a, b = model.state_dict(), out.state_dict()
    for k in a:
        moved = not (a[k] == b[k]).all()
        assert moved == any(k.startswith(m + ".") for m in chosen), k
    with pytest.raises(ValueError, match="match no parameter"):
        unlearn(model, tok, forget, world.facts("retain", "trained", "forget10"), "ga", only_modules=("nope",),
                steps=1, progress=False)
    with pytest.raises(ValueError, match="fraction"):
        Q.salient_modules(model, tok, forget, fraction=0)


def _forget_table():
    """A hand-made models-by-quantization table of forget accuracy."""
    import pandas as pd

    return pd.DataFrame({"full precision": [0.9, 0.2, 0.1], "RTN 4-bit": [0.85, 0.5, 0.1],
                         "RTN 8-bit": [0.9, 0.2, 0.1]}, index=["original", "ga", "gd"])


def test_by_quantization_keeps_the_models_order_and_forget_gain_by_hand():
    import pandas as pd

    from unlearn_utils import quantize as Q

    long = pd.DataFrame([{"model": m, "quantization": q, "forget": f, "retain": r}
                         for m, f0 in (("zeta", 0.5), ("alpha", 0.1))
                         for q, f, r in (("full precision", f0, 0.9), ("RTN 4-bit", f0 + 0.2, 0.8))])
    table = Q.by_quantization(long, "forget")
    assert list(table.index) == ["zeta", "alpha"]  # the models' order, not alphabetical
    assert table.loc["zeta", "RTN 4-bit"] == pytest.approx(0.7) and table.loc["alpha", "full precision"] == 0.1
    assert Q.by_quantization(long, "retain").loc["alpha", "RTN 4-bit"] == 0.8
    gains = Q.forget_gain(_forget_table(), ["gd", "ga"])
    assert list(gains) == ["gd", "ga"] and gains["ga"] == pytest.approx(0.3) and gains["gd"] == 0
    every = Q.forget_gain(_forget_table())
    assert list(every) == ["original", "ga", "gd"] and every["original"] == pytest.approx(-0.05)
    assert Q.forget_gain(_forget_table(), ["ga"], bits=8) == {"ga": 0}


def test_quantized_versions_skips_bitsandbytes_with_a_note(tiny, monkeypatch, capsys):
    from unlearn_utils import quantize as Q

    world, model, tok = tiny

    def no_bnb(*a, **k):
        raise RuntimeError("no build here")

    monkeypatch.setattr(Q, "load_bnb", no_bnb)
    versions = dict(Q.quantized_versions(model, 32))
    assert list(versions) == ["full precision", "RTN 8-bit", "RTN 4-bit", "RTN 3-bit"]
    assert "bitsandbytes 4-bit unavailable here (RuntimeError: no build here)" in capsys.readouterr().out
    assert versions["full precision"] is model
    w = "model.layers.0.mlp.down_proj.weight"
    assert torch.equal(versions["RTN 3-bit"].state_dict()[w], Q.quantize_model(model, 3, 32).state_dict()[w])
    monkeypatch.setattr(Q, "load_bnb", lambda m, bits, kind, device=None: ("bnb", bits, kind))
    versions = dict(Q.quantized_versions(model, 32, bits=(4,)))
    assert list(versions) == ["full precision", "RTN 4-bit", "bnb nf4"] and versions["bnb nf4"] == ("bnb", 4, "nf4")


def test_accuracy_tables_under_quantization(tiny, monkeypatch):
    import copy

    from unlearn_utils import evaluate as ev
    from unlearn_utils import quantize as Q

    world, model, tok = tiny
    monkeypatch.setattr(Q, "load_bnb", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("off")))
    forget, retain = world.facts("forget10", "trained"), world.facts("retain", "trained", "forget10")
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.model.layers[0].mlp.down_proj.weight.mul_(0.5)
    long = Q.accuracy_under_quantization({"a": model, "b": other}, tok, forget, retain, 32)
    assert list(long.model) == ["a"] * 4 + ["b"] * 4
    assert list(long.quantization[:4]) == ["full precision", "RTN 8-bit", "RTN 4-bit", "RTN 3-bit"]
    assert long.forget[4] == ev.accuracy(other, tok, forget) and long.retain[0] == ev.accuracy(model, tok, retain)
    assert long.forget[6] == ev.accuracy(Q.quantize_model(other, 4, 32), tok, forget)
    small = Q.small_lr_regime(model, {"b": other}, tok, forget, 32)
    assert list(small.columns) == ["median |dw|/step", "full precision", "RTN 8-bit", "RTN 4-bit", "RTN 3-bit"]
    assert small.loc["b", "RTN 4-bit"] == long.forget[6]
    ch = Q.change_in_steps(model, other, 4, 32)
    assert small.loc["b", "median |dw|/step"] == pytest.approx(ch["median"].median()) and ch["median"].max() > 0
    sure = Q.sure_table({"a": model, "b": other}, tok, forget, retain, 32)
    assert list(sure.columns) == ["forget, full precision", "forget, RTN 8-bit", "forget, RTN 4-bit",
                                  "forget, RTN 3-bit", "retain, full precision"]
    assert (sure.loc["b", "forget, RTN 4-bit"] == long.forget[6]
            and sure.loc["b", "retain, full precision"] == long.retain[4])


def test_mechanism_table_weights_modules_by_size(tiny):
    import copy

    import numpy as np

    from unlearn_utils import quantize as Q

    world, model, tok = tiny
    other = copy.deepcopy(model)
    w = other.model.layers[0].mlp.down_proj.weight
    with torch.no_grad():
        w.add_(3 * Q.quantization_step(w.detach(), 4, 32))  # one module moves by 3 steps, the others not at all
    forget = _forget_table().rename(index={"ga": "moved", "gd": "same"})
    mech = Q.mechanism_table(model, {"moved": other, "same": copy.deepcopy(model)}, ["moved", "same"], forget, 4, 32)
    ch = Q.change_in_steps(model, other, 4, 32).set_index("module")
    share = ch.n_weights["model.layers.0.mlp.down_proj"] / ch.n_weights.sum()
    assert mech.loc["moved", "median |dw|/step"] == pytest.approx(3.0 * share, rel=1e-3)
    assert mech.loc["moved", "p99 |dw|/step"] == pytest.approx(3.0, rel=1e-3)
    assert mech.loc["moved", "codes changed (4-bit)"] == pytest.approx(
        ch.changed_after_quant["model.layers.0.mlp.down_proj"] * share)
    assert (mech.loc["same", ["median |dw|/step", "p99 |dw|/step", "codes changed (4-bit)"]] == 0).all()
    assert mech.loc["moved", "forget, full precision"] == 0.2 and mech.loc["moved", "forget, 4-bit"] == 0.5
    curves = Q.cumulative_steps(model, {"moved": other, "same": model}, ["moved", "same"], 4, 32, every=1000)
    x, y = curves["moved"]
    n = len(Q.steps_histogram(model, other, 4, 32))
    assert list(curves) == ["moved", "same"] and len(x) == len(y) == len(range(0, n, 1000)) > 2
    assert (np.diff(x) >= 0).all() and x[0] == 0 and 0 < x[-1] <= 3.0 * (1 + 1e-3)  # most weights did not move
    assert y[0] == 0 and y[-1] == 1 and y[1] == pytest.approx(1 / (len(y) - 1)) and (curves["same"][0] == 0).all()
