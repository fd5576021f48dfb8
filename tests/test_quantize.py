import pytest
import torch

from unlearn_utils import evaluate as ev
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
