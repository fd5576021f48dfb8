import pytest
import torch

from unlearn_utils.quantize import load_bnb, quantization_step, quantize_model, quantize_tensor


@pytest.mark.parametrize("bits", [8, 4, 3])
@pytest.mark.parametrize("group", [None, 16])
@pytest.mark.parametrize("symmetric,step_kind", [(True, "paper"), (True, "absmax"), (False, "paper")])
def test_error_within_half_a_step(bits, group, symmetric, step_kind):
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(bits))
    q = quantize_tensor(w, bits, group, symmetric, step_kind)
    step = quantization_step(w, bits, group, symmetric, step_kind)
    # the paper's grid clips the weights above the top code, 2^(bits-1) - 1 steps, by up to one step
    clipped = (w > (2 ** (bits - 1) - 0.5) * step) if (symmetric and step_kind == "paper") else torch.zeros_like(
        w, dtype=torch.bool)
    assert ((q - w).abs() <= step / 2 + 1e-6)[~clipped].all()
    assert ((q - w).abs() <= step + 1e-6)[clipped].all()
    # the grid really has at most 2^bits levels per group
    g = q.reshape(8, -1, group or 64)
    assert max(len(torch.unique(g[i, j])) for i in range(8) for j in range(g.shape[1])) <= 2 ** bits


def test_rtn_step_is_the_quantization_papers_by_hand():
    """Zhang et al.: step = max|w| / 2^(N-1); the absmax grid, max|w| / (2^(N-1) - 1), has a step 8/7 as large."""
    w = torch.tensor([[0.8, -0.43, 0.16, 0.04]])
    # paper: step 0.8 / 8 = 0.1; w / step = 8, -4.3, 1.6, 0.4 -> codes 7 (8 clipped to a 4-bit integer's top), -4, 2, 0
    assert quantization_step(w, 4, 4)[0, 0].item() == pytest.approx(0.1)
    assert quantize_tensor(w, 4, 4).tolist()[0] == pytest.approx([0.7, -0.4, 0.2, 0.0], abs=1e-6)
    # absmax: step 0.8 / 7; w / step = 7, -3.7625, 1.4, 0.35 -> codes 7, -4, 1, 0
    s = 0.8 / 7
    assert quantization_step(w, 4, 4, step="absmax")[0, 0].item() == pytest.approx(s)
    assert quantize_tensor(w, 4, 4, step="absmax").tolist()[0] == pytest.approx([0.8, -4 * s, s, 0.0], abs=1e-6)
    assert (quantization_step(w, 4, 4, step="absmax") / quantization_step(w, 4, 4))[0, 0].item() == pytest.approx(
        8 / 7)
    # the most negative code is used: -0.8 is exactly -8 steps
    assert quantize_tensor(-w, 4, 4).tolist()[0] == pytest.approx([-0.8, 0.4, -0.2, 0.0], abs=1e-6)
    with pytest.raises(ValueError, match="Unknown RTN step"):
        quantize_tensor(w, 4, 4, step="max")


def test_a_constant_group_is_kept_and_not_measured_in_steps(tiny):
    """A group of equal weights has a one-point grid (step 0): kept exactly, and change_in_steps measures no ratio
    there (it used to divide by 1e-12 and report changes of about 10^9 steps)."""
    import copy

    from unlearn_utils import quantize as Q

    w = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, -2.0, 0.5, 0.25]])
    assert quantization_step(w, 4, 4)[0].tolist() == [0.0] * 4 + [0.25] * 4   # 2 / 2^3
    assert torch.equal(quantize_tensor(w, 4, 4)[0, :4], torch.zeros(4))
    asym = torch.full((1, 4), 0.3)
    assert torch.equal(quantize_tensor(asym, 4, 4, symmetric=False), asym)
    world, model, tok = tiny
    original, unlearned = copy.deepcopy(model), copy.deepcopy(model)
    name = "model.layers.0.mlp.down_proj"
    with torch.no_grad():
        w0 = original.model.layers[0].mlp.down_proj.weight
        w0[:, :32] = 0.0                       # the first group of 32 of every row: constant
        w1 = unlearned.model.layers[0].mlp.down_proj.weight
        w1.copy_(w0)
        w1[:, :32] = 0.01                      # moved, in a group with no step
        step = Q.quantization_step(w0, 4, 32)[:, 32:]
        w1[:, 32:] += 0.25 * step              # a quarter of a step everywhere else
    ch = Q.change_in_steps(original, unlearned, 4, 32).set_index("module").loc[name]
    assert ch["constant_groups"] == pytest.approx(32 / w0.shape[1])
    assert ch["median"] == pytest.approx(0.25, rel=1e-3) and ch["p99"] == pytest.approx(0.25, rel=1e-3)
    assert Q.steps_histogram(original, unlearned, 4, 32).max() < 1


def test_bfloat16_weights_move_half_a_step_plus_the_dtypes_rounding():
    w32 = torch.randn(16, 64, generator=torch.Generator().manual_seed(3))
    w = w32.to(torch.bfloat16)
    q = quantize_tensor(w, 4, 32, step="absmax")
    assert q.dtype == torch.bfloat16
    step = quantization_step(w, 4, 32, step="absmax")
    err = (q.float() - w.float()).abs()
    assert (err <= step / 2 + q.float().abs() * 2 ** -8 + 1e-7).all()   # the bound in quantize_tensor's docstring
    assert (err > step / 2 + 1e-7).any()   # the bfloat16 rounding of the grid points alone breaks half a step
    exact = quantize_tensor(w.float(), 4, 32, step="absmax")          # in float32 the bound is half a step
    assert ((exact - w.float()).abs() <= step / 2 + 1e-6).all()


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


# ----------------------------------------------------------------------------------------------
# GGUF block formats, schemes, valid group sizes, the grid effect
# ----------------------------------------------------------------------------------------------
def _llama(hidden, intermediate, seed=0):
    """A random one-layer Llama with the given widths (input widths: hidden and intermediate)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=intermediate,
                                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)).eval()


# per-block grid step of each format on its own terms, and how many steps a weight may move (Q4_0 / Q5_0 clip the
# largest weight of the sign opposite to the block's absmax by one step; the others round to the nearest level)
_STEP = {"Q4_0": (lambda b: b.abs().amax(-1, keepdim=True) / 8, 1.0),
         "Q5_0": (lambda b: b.abs().amax(-1, keepdim=True) / 16, 1.0),
         "Q8_0": (lambda b: b.abs().amax(-1, keepdim=True) / 127, 0.5),
         "Q4_1": (lambda b: (b.amax(-1, keepdim=True) - b.amin(-1, keepdim=True)) / 15, 0.5),
         "Q5_1": (lambda b: (b.amax(-1, keepdim=True) - b.amin(-1, keepdim=True)) / 31, 0.5)}


@pytest.mark.parametrize("fmt", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"])
def test_gguf_round_trip_on_random_data(fmt):
    from unlearn_utils import quantize as Q

    w = torch.randn(16, 128, generator=torch.Generator().manual_seed(1))
    dq = Q.quantize_tensor_gguf(w, fmt)
    assert dq.shape == w.shape and dq.dtype == w.dtype
    blocks, err = w.reshape(16, 4, 32), (dq - w).abs().reshape(16, 4, 32)
    step_of, allowed = _STEP[fmt]
    step = step_of(blocks)
    # fp16 scales (and minima) add a rounding error of a fraction of a percent of a step
    assert (err <= allowed * step * 1.02 + 1e-3 * blocks.abs().amax(-1, keepdim=True)).all()
    assert (err <= 0.5 * step * 1.02).float().mean() > 0.99  # all but the clipped extremes: half a step
    assert (dq != w).float().mean() > 0.9  # random data is off every grid
    # quantizing an already quantize-dequantized tensor moves nothing
    assert torch.equal(Q.quantize_tensor_gguf(dq, fmt), dq)
    # the integer codes are in the format's range, at most 2^bits levels per block, and rebuild the weight
    bits = int(fmt[1])
    _, codes = Q._quantized_weight(w, Q.as_scheme(fmt))
    lo, hi = (0, 2 ** bits - 1) if fmt.endswith("_1") else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    assert lo <= int(codes.min()) and int(codes.max()) <= (127 if fmt == "Q8_0" else hi)
    c = codes.reshape(16, 4, 32).float()
    d = (dq.reshape(16, 4, 32) - (dq.reshape(16, 4, 32).amin(-1, keepdim=True) if fmt.endswith("_1") else 0))
    ratio = d / c.where(c != 0, torch.ones_like(c))
    nonzero = c != 0
    assert torch.allclose(ratio[nonzero].reshape(-1), ratio.where(nonzero, torch.nan).nanmean(-1, keepdim=True)
                          .expand_as(ratio)[nonzero].reshape(-1), rtol=1e-4)  # one scale per block


def test_gguf_model_copy_leaves_the_original_and_embeddings(tiny):
    from unlearn_utils import quantize as Q

    world, model, tok = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = Q.quantize_model_gguf(model, "Q4_1")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    qs = q.state_dict()
    for k in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"):
        assert torch.equal(qs[k], before[k]), k
    down = "model.layers.1.mlp.down_proj.weight"
    assert torch.equal(qs[down], Q.quantize_tensor_gguf(before[down], "Q4_1"))
    assert torch.equal(Q.quantize_as(model, "Q4_1").state_dict()[down], qs[down])
    x = torch.tensor([[1, 5, 6, 7, 8]])
    assert (Q.quantize_model_gguf(model, "Q8_0")(x).logits - model(x).logits).abs().max() < 0.05


@pytest.mark.parametrize("fmt", ["Q4_0", "Q4_1", "Q5_1", "Q8_0"])
def test_native_grid_finds_the_format_a_model_sits_on(tiny, fmt):
    from unlearn_utils import quantize as Q

    world, model, tok = tiny
    on_grid = Q.quantize_model_gguf(model, fmt)
    assert Q.native_grid(on_grid) == fmt
    assert Q.weights_moved(on_grid, fmt) == 0
    others = {f: Q.weights_moved(on_grid, f) for f in Q.GGUF_FORMATS if f != fmt}
    # Q4_0's grid (d * k, k in -8..7, d = absmax / 8) is part of Q5_0's (d / 2 * k, k in -16..15): nested grids
    nested = ["Q5_0"] if fmt == "Q4_0" else []
    assert all(others[f] == 0 for f in nested) and all(v > 0.5 for f, v in others.items() if f not in nested)
    assert Q.native_grid(model) is None and Q.weights_moved(model, fmt) > 0.9
    assert Q.native_grid(on_grid, candidates=[f for f in others if f not in nested]) is None


def test_smollm2_sits_on_its_files_q4_1_grid(smol):
    from unlearn_utils import quantize as Q

    model, _ = smol
    assert Q.input_widths(model) == [576, 1536] and Q.default_group_size(model) == 64
    assert Q.native_grid(model) == "Q4_1"
    table = Q.grid_table(model, schemes=["Q4_1", "Q4_0", "RTN 4-bit g64"])
    assert list(table.index) == ["GGUF Q4_1", "GGUF Q4_0", "RTN 4-bit g64"]
    assert list(table.columns) == ["moved on original"] and table.loc["GGUF Q4_1", "moved on original"] == 0
    assert (table["moved on original"].drop("GGUF Q4_1") > 0.5).all()
    assert [s.name for s in Q.grid_schemes(model, native="Q4_1")] == [
        "GGUF Q4_1", "GGUF Q4_0", "RTN 4-bit", "bnb nf4", "GGUF Q8_0", "RTN 8-bit"]


def test_codes_changed_by_a_known_perturbation(tiny):
    import copy

    from unlearn_utils import quantize as Q

    world, model, tok = tiny
    original = Q.quantize_model_gguf(model, "Q4_1")  # a checkpoint released as Q4_1
    schemes = ["Q4_1", "Q4_0", "RTN 4-bit g32", "nf4", "int8"]
    same = Q.grid_table(original, copy.deepcopy(original), schemes)
    assert (same[["codes changed", "values changed"]] == 0).all().all()
    assert same.loc["GGUF Q4_1", "moved on original"] == 0
    assert (same["moved on original"].drop("GGUF Q4_1") > 0.5).all()
    total = sum(m.weight.numel() for m in Q.quantizable_linears(original).values())

    def nudged(steps):
        """The original with every 5th weight of one layer whose code is 1..13 moved up by ``steps`` of its block's
        step (block minima and maxima, hence the blocks' scales, stay put)."""
        other = copy.deepcopy(original)
        w = other.model.layers[0].mlp.down_proj.weight
        b = w.data.view(w.shape[0], -1, 32)
        lo = b.amin(-1, keepdim=True)
        step = (b.amax(-1, keepdim=True) - lo) / 15
        codes = torch.round((b - lo) / step)
        pick = (codes >= 1) & (codes <= 13) & (torch.arange(b.numel()).reshape(b.shape) % 5 == 0)
        with torch.no_grad():
            b.add_(torch.where(pick, steps * step, torch.zeros_like(b)))
        return other, int(pick.sum())

    other, n = nudged(1.0)  # one full step: exactly the picked codes change
    table = Q.grid_table(original, other, ["Q4_1"]).loc["GGUF Q4_1"]
    assert n > 100 and table["codes changed"] == n / total == table["values changed"]
    other, n = nudged(0.3)  # a third of a step: every picked weight moved, yet the Q4_1 model is the original's
    table = Q.grid_table(original, other, ["Q4_1"]).loc["GGUF Q4_1"]
    assert table["codes changed"] == 0 and table["values changed"] == 0
    assert Q.change_in_steps(original, other, 4, 32).moved.max() > 0
    assert torch.equal(Q.quantize_model_gguf(other, "Q4_1").model.layers[0].mlp.down_proj.weight,
                       original.model.layers[0].mlp.down_proj.weight)


def test_bitsandbytes_codes_match_what_load_bnb_stores(tiny):
    import bitsandbytes.functional as F

    from unlearn_utils import quantize as Q

    world, model, tok = tiny
    w = model.model.layers[0].mlp.down_proj.weight.detach()
    dq8, codes8 = Q._quantized_weight(w, Q.as_scheme("int8"))
    lin8 = Q.load_bnb(model, 8, device="cpu").model.layers[0].mlp.down_proj
    assert torch.equal(codes8, lin8.weight.data)
    lin4 = Q.load_bnb(model, 4, "nf4", device="cpu").model.layers[0].mlp.down_proj
    dq4, _ = Q._quantized_weight(w, Q.as_scheme("nf4"))
    assert torch.equal(F.dequantize_4bit(lin4.weight.data, lin4.weight.quant_state).float(), dq4)
    assert Q.weights_moved(model, "nf4") > 0.9 and Q.weights_moved(model, "bnb int8") > 0.9


def test_group_sizes_a_model_allows():
    from unlearn_utils import quantize as Q

    odd = _llama(48, 96)  # widths 48 and 96: 64 and 32 do not divide them
    assert Q.input_widths(odd) == [48, 96]
    assert Q.valid_group_sizes(odd) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 48]
    assert Q.default_group_size(odd) == 48 and Q.default_group_size(odd, preferred=32) == 24
    assert Q.default_group_size(_llama(64, 128)) == 64 and Q.default_group_size(_llama(56, 88)) is None  # gcd 8
    w = "model.layers.0.mlp.down_proj.weight"
    auto = Q.quantize_model(odd, 4).state_dict()[w]
    assert torch.equal(auto, Q.quantize_tensor(odd.state_dict()[w], 4, 48))
    assert not torch.equal(auto, odd.state_dict()[w])
    assert Q.resolve_group_size(odd, None) is None and Q.resolve_group_size(odd, 24) == 24


def test_bad_group_size_and_format_are_refused_before_any_work(tiny, monkeypatch):
    from unlearn_utils import evaluate as ev
    from unlearn_utils import quantize as Q

    odd = _llama(48, 96)
    world, model, tok = tiny
    forget = world.facts("forget10", "trained")

    def no_work(*a, **k):
        raise AssertionError("work started before the argument was checked")

    import copy

    monkeypatch.setattr(copy, "deepcopy", no_work)  # the copy quantization writes into (arch.merged_copy)
    monkeypatch.setattr(ev, "accuracy", no_work)
    with pytest.raises(ValueError, match=r"group size 32 does not divide .*\[48, 96\].*\[1, 2, 3, 4, 6, 8, 12, 16, 24"):
        Q.quantize_model(odd, 4, group_size=32)
    for bad in (0, 7.5, "64"):
        with pytest.raises(ValueError, match="group size"):
            Q.quantize_model(odd, 4, group_size=bad)
    with pytest.raises(ValueError, match=r"blocks of 32 .*\[48, 96\]"):
        Q.quantize_model_gguf(odd, "Q4_1")
    with pytest.raises(ValueError, match="blocks of 32"):
        Q.weights_moved(odd, "Q8_0")
    with pytest.raises(ValueError, match="Unsupported GGUF format 'Q3_X'"):
        Q.quantize_model_gguf(odd, "Q3_X")
    with pytest.raises(ValueError, match=r"\[32, 64\]"):
        Q.accuracy_under_quantization({"a": model}, tok, forget, forget, group_size=48)
    with pytest.raises(ValueError, match=r"\[32, 64\]"):
        Q.accuracy_under_quantization({"a": model}, tok, forget, forget, schemes=["Q4_1", "RTN 4-bit g48"])
    with pytest.raises(ValueError, match="Unknown quantization scheme"):
        Q.accuracy_under_quantization({"a": model}, tok, forget, forget, schemes=["Q4_1", "nf5"])
    assert [s.name for s in Q.grid_schemes(odd, native=None)] == ["RTN 4-bit", "bnb nf4", "RTN 8-bit"]


def test_scheme_names_round_trip_and_bad_names():
    from unlearn_utils.quantize import Scheme, as_scheme

    schemes = [Scheme.rtn(4, 64), Scheme.rtn(4, None), Scheme.rtn(8), Scheme.rtn(3, 32, symmetric=False),
               Scheme.gguf("q4_1"), Scheme.bnb("nf4"), Scheme.bnb("int8"), Scheme.rtn(4, 64, step="absmax")]
    assert [s.name for s in schemes] == ["RTN 4-bit g64", "RTN 4-bit per channel", "RTN 8-bit", "RTN 3-bit g32 asym",
                                         "GGUF Q4_1", "bnb nf4", "bnb int8", "RTN 4-bit g64 absmax"]
    assert all(as_scheme(s.name) == s for s in schemes) and as_scheme("nf4") == Scheme.bnb("nf4")
    assert as_scheme("Q4_1") == Scheme.gguf("Q4_1") and str(as_scheme("q8_0")) == "GGUF Q8_0"
    with pytest.raises(ValueError, match="K-quants"):
        as_scheme("Q4_K")
    with pytest.raises(ValueError, match="Unsupported bit width 1"):
        as_scheme("RTN 1-bit g64")
    with pytest.raises(ValueError, match="Unknown bitsandbytes type"):
        Scheme.bnb("nf3")
    with pytest.raises(ValueError, match="Unsupported GGUF format 'Q4'"):
        as_scheme("Q4")
    with pytest.raises(ValueError, match="Unknown quantization scheme 'int4'"):
        as_scheme("int4")


def test_accuracy_under_schemes_and_the_grid_effect_table(tiny):
    import copy

    from unlearn_utils import evaluate as ev
    from unlearn_utils import quantize as Q

    world, model, tok = tiny
    forget, retain = world.facts("forget10", "trained"), world.facts("retain", "trained", "forget10")
    original = Q.quantize_model_gguf(model, "Q4_1")
    unlearned = copy.deepcopy(original)
    with torch.no_grad():
        unlearned.model.layers[0].mlp.down_proj.weight.mul_(0.5)  # halves each block's scale, keeps every code
        unlearned.model.layers[1].mlp.down_proj.weight.add_(0.01)  # shifts each block: its minimum, not its codes
        unlearned.model.layers[1].mlp.up_proj.weight[:, :32].neg_()  # mirrors the first block of every row
        unlearned.model.norm.weight.mul_(0.9)  # not quantized: survives every grid
    schemes = ["Q4_1", Q.Scheme.rtn(4, 32), "Q8_0"]
    long = Q.accuracy_under_quantization({"o": original, "u": unlearned}, tok, forget, retain, schemes=schemes)
    names = ["full precision", "GGUF Q4_1", "RTN 4-bit g32", "GGUF Q8_0"]
    assert list(long.quantization[:4]) == names
    assert long.forget[5] == ev.accuracy(Q.quantize_model_gguf(unlearned, "Q4_1"), tok, forget)
    assert list(Q.by_quantization(long).columns) == names
    effect = Q.grid_effect(original, unlearned, tok, forget, retain, schemes=schemes, names=("o", "u"))
    assert list(effect.index) == names
    assert list(effect.columns) == ["forget, o", "forget, u", "retain, o", "retain, u", "moved on original",
                                    "codes changed", "values changed"]
    assert effect.loc["GGUF Q4_1", "forget, u"] == long.forget[5]
    assert effect.loc["GGUF Q8_0", "retain, o"] == long.retain[3]
    assert effect.loc["full precision", ["moved on original", "codes changed"]].isna().all()
    shares = Q.grid_table(original, unlearned, schemes)
    assert effect[shares.columns].drop("full precision").equals(shares)
    total = sum(m.weight.numel() for m in Q.quantizable_linears(original).values())
    layer = Q.quantizable_linears(original)
    scaled = layer["model.layers.0.mlp.down_proj"].weight.numel() + layer["model.layers.1.mlp.down_proj"].weight.numel()
    mirrored = layer["model.layers.1.mlp.up_proj"].weight[:, :32].numel()
    # on Q4_1 a mirrored block's codes become 15 - code (a code 7 or 8 can land on 8 or 7: never the same)
    assert shares.loc["GGUF Q4_1", "moved on original"] == 0
    assert shares.loc["GGUF Q4_1", "codes changed"] == pytest.approx(mirrored / total)
    assert shares.loc["GGUF Q4_1", "values changed"] == pytest.approx((scaled + mirrored) / total, rel=0.02)


# ---- a tied unembedding with include_lm_head; a LoRA model ---------------------------------------------------------
@pytest.mark.parametrize("fmt", [None, "Q8_0"])
def test_include_lm_head_on_a_tied_model_unties_it_and_keeps_the_embeddings(tmp_path, fmt):
    """Quantizing the unembedding of a model whose unembedding *is* its input embedding (tied) once quantized the
    embeddings too. The copy is untied: its unembedding gets its own quantized weight, the embeddings stay full
    precision, and saved and reloaded the two stay two matrices."""
    import transformers as tf

    from test_arch import family_config

    from unlearn_utils.quantize import quantize_model_gguf

    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(family_config("gemma", vocab=96, hidden=32, inner=64, layers=2))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    emb = model.model.embed_tokens.weight.detach().clone()
    q = quantize_model(model, 4, 16, include_lm_head=True) if fmt is None else \
        quantize_model_gguf(model, fmt, include_lm_head=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight, "the original stays tied"
    assert torch.equal(model.model.embed_tokens.weight, emb), "and unquantized"
    assert torch.equal(q.model.embed_tokens.weight, emb), "the copy's input embeddings stay full precision"
    assert q.lm_head.weight.data_ptr() != q.model.embed_tokens.weight.data_ptr()
    expect = quantize_tensor(emb, 4, 16) if fmt is None else None
    if expect is not None:
        assert torch.equal(q.lm_head.weight, expect)
    else:
        assert not torch.equal(q.lm_head.weight, emb)
    assert q.config.tie_word_embeddings is False
    q.save_pretrained(tmp_path)
    again = tf.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(again.model.embed_tokens.weight, emb) and torch.equal(again.lm_head.weight, q.lm_head.weight)
    x = torch.tensor([[1, 5, 6, 7]])
    assert torch.equal(again(x).logits, q(x).logits)
    # without include_lm_head nothing is untied
    plain = quantize_model(model, 4, 16)
    assert plain.lm_head.weight is plain.model.embed_tokens.weight and torch.equal(plain.lm_head.weight, emb)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_lora_model_is_quantized_as_its_merged_weights(family):
    """A peft model straight from unlearn(..., lora=True): its layers are the plain model's (the LoRA matrices are
    no layers of their own, so no rank-8 input widths force per-channel grids), and quantizing it quantizes the merged
    weights: the same model, logit for logit, as quantizing the merged copy."""
    import copy

    import pandas as pd
    import transformers as tf

    from test_arch import family_config

    from unlearn_utils import quantize as Q
    from unlearn_utils.unlearning.methods import UnlearnConfig, _add_lora

    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(family_config(family, vocab=96, hidden=64, inner=128, layers=2)).eval()
    wrapped = _add_lora(copy.deepcopy(model), UnlearnConfig.for_method("grad_diff", lora=True)).eval()
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    merged = copy.deepcopy(wrapped).merge_and_unload()
    names = list(Q.quantizable_linears(wrapped))
    assert names == list(Q.quantizable_linears(merged)) == list(Q.quantizable_linears(model))
    assert not any("lora" in n for n in names)
    assert Q.input_widths(wrapped) == Q.input_widths(model) and Q.default_group_size(wrapped) == 64
    before = {k: v.clone() for k, v in wrapped.state_dict().items()}
    x = torch.tensor([[1, 5, 6, 7, 8]])
    for q_wrapped, q_merged in ((quantize_model(wrapped, 4), quantize_model(merged, 4)),
                                (Q.quantize_as(wrapped, "Q4_1"), Q.quantize_as(merged, "Q4_1"))):
        assert not any("lora" in n for n, _ in q_wrapped.named_parameters()), "a plain model"
        assert torch.allclose(q_wrapped(x).logits, q_merged(x).logits, atol=1e-6)
    assert all(torch.equal(v, before[k]) for k, v in wrapped.state_dict().items()), "the LoRA model is untouched"
    assert Q.weights_moved(wrapped, "Q4_0") == Q.weights_moved(merged, "Q4_0")
    pd.testing.assert_frame_equal(Q.change_in_steps(model, wrapped, bits=4), Q.change_in_steps(model, merged, bits=4),
                                  atol=1e-5)
