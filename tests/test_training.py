"""The output layer computed only where the losses and scores read it (training.answer_positions / logits_at), and
the training loop's refusals (impossible settings, a diverging run)."""

import math

import pytest
import torch
import transformers as tf

from test_arch import FAMILIES, V, tiny_model
from unlearn_utils.training import (NonFiniteLossError, answer_positions, epoch_batches, logits_at, output_head,
                                    pad_batch, train_loop)
from unlearn_utils.unlearning import losses as L


def test_answer_positions_by_hand():
    labels = torch.tensor([[-100, -100, 7, 8, -100],   # answer 7 8 after a two-token prompt, then padding
                           [-100, 5, -100, -100, -100],
                           [-100, -100, -100, -100, -100]])
    positions, compact = answer_positions(labels)
    # the logits at position t predict token t + 1; the first compact label is a placeholder like a BOS token
    assert positions.tolist() == [[1, 2, 0], [0, 0, 0], [0, 0, 0]]
    assert compact.tolist() == [[-100, 7, 8], [-100, 5, -100], [-100, -100, -100]]


def _batch(vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (9, 6, 12, 7)]
    masks = [[0] * (n - a) + [1] * a for n, a in zip((9, 6, 12, 7), (2, 3, 1, 7))]
    return pad_batch(seqs, 0, masks)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_at_answers_equal_the_full_logits_there(family):
    model = tiny_model(family)
    b = _batch(V)
    positions, compact = answer_positions(b["labels"])
    with torch.no_grad():
        full = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        part = logits_at(model, b["input_ids"], b["attention_mask"], positions)
    assert part.shape == (*positions.shape, V)
    assert torch.allclose(part, full.gather(1, positions[..., None].expand(-1, -1, V)), atol=1e-5)
    # every loss reads the same numbers from the short layout as from the full one
    assert torch.allclose(L.mean_nll(part, compact), L.mean_nll(full, b["labels"]), atol=1e-5)
    s1, n1 = L.sequence_nll(part, compact)
    s2, n2 = L.sequence_nll(full, b["labels"])
    assert torch.allclose(s1, s2, atol=1e-5) and torch.equal(n1, n2)
    other = full.flip(-1)  # any second set of logits: KL needs both at the same positions
    assert torch.allclose(L.kl_to_reference(part, other.gather(1, positions[..., None].expand(-1, -1, V)), compact),
                          L.kl_to_reference(full, other, b["labels"]), atol=1e-5)


def test_logits_at_keeps_the_models_own_logit_processing_and_gradients():
    torch.manual_seed(0)
    config = tf.Gemma2Config(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=8, final_logit_softcapping=2.0)
    model = tf.AutoModelForCausalLM.from_config(config)
    b = _batch(V, seed=1)
    positions, compact = answer_positions(b["labels"])
    full = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    assert full.abs().max() <= 2.0, "soft-capped"
    part = logits_at(model, b["input_ids"], b["attention_mask"], positions)
    assert torch.allclose(part, full.gather(1, positions[..., None].expand(-1, -1, V)), atol=1e-5)
    g_full = torch.autograd.grad(L.mean_nll(full, b["labels"]), model.model.layers[0].mlp.down_proj.weight)[0]
    part = logits_at(model, b["input_ids"], b["attention_mask"], positions)
    g_part = torch.autograd.grad(L.mean_nll(part, compact), model.model.layers[0].mlp.down_proj.weight)[0]
    assert torch.allclose(g_full, g_part, atol=1e-6)
    assert not output_head(model)._forward_pre_hooks, "the hook lives only for the call"


def test_logits_at_without_an_output_embedding_gathers_the_full_logits():
    inner = tiny_model("llama")

    class Wrapper(torch.nn.Module):  # no get_output_embeddings: the full logits are computed, then gathered
        def __init__(self):
            super().__init__()
            self.m = inner

        def forward(self, **kw):
            return self.m(**kw)

    b = _batch(V, seed=2)
    positions, _ = answer_positions(b["labels"])
    with torch.no_grad():
        full = inner(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        part = logits_at(Wrapper(), b["input_ids"], b["attention_mask"], positions)
    assert output_head(Wrapper()) is None
    assert torch.allclose(part, full.gather(1, positions[..., None].expand(-1, -1, V)), atol=1e-6)


def test_logits_at_on_lora_and_grun_wrapped_models():
    from peft import LoraConfig, get_peft_model

    from unlearn_utils.grun import GatedModel, GRUN, GRUNConfig

    b = _batch(V, seed=3)
    positions, _ = answer_positions(b["labels"])
    lora = get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    gated = GatedModel(tiny_model("llama"), GRUN.for_model(tiny_model("llama"), GRUNConfig()))
    gated.force_gate = 1.0  # the edit applies
    edit = GatedModel.edit_positions(b["input_ids"], b["attention_mask"], b["labels"])
    for model, extra in ((lora, {}), (gated, {"prompt_positions": edit})):
        with torch.no_grad():
            full = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], **extra).logits
            part = logits_at(model, b["input_ids"], b["attention_mask"], positions, **extra)
        assert torch.allclose(part, full.gather(1, positions[..., None].expand(-1, -1, V)), atol=1e-5)


def test_logits_at_leaves_an_output_layer_fed_another_shape_alone():
    inner = tiny_model("llama")

    class Flat(torch.nn.Module):  # calls the head on [batch x seq, hidden]: the hook must not gather there
        def __init__(self):
            super().__init__()
            self.m = inner

        def get_output_embeddings(self):
            return inner.lm_head

        def forward(self, input_ids, attention_mask):
            h = inner.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            logits = inner.lm_head(h.reshape(-1, h.shape[-1])).view(*h.shape[:2], -1)
            return type("Out", (), {"logits": logits})()

    b = _batch(V, seed=4)
    positions, _ = answer_positions(b["labels"])
    with torch.no_grad():
        full = inner(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        part = logits_at(Flat(), b["input_ids"], b["attention_mask"], positions)
    assert torch.allclose(part, full.gather(1, positions[..., None].expand(-1, -1, V)), atol=1e-5)


def _linear_run(loss_at, steps=4, **kw):
    """train_loop on a 2x2 linear layer whose loss at each step is ``loss_at(step, weight)``; returns (layer, log)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(2, 2)
    calls = {"step": 0}

    def loss_fn(m, _batch):
        calls["step"] += 1
        return loss_at(calls["step"], m.weight)

    return layer, train_loop(layer, lambda step: {}, steps, kw.pop("lr", 1e-2), loss_fn=loss_fn, progress=False, **kw)


@pytest.mark.parametrize("setting, value", [("lr", float("inf")), ("lr", float("nan")), ("lr", 0.0), ("lr", "3e-4"),
                                            ("steps", 2.5), ("steps", True), ("warmup", -1), ("clip", float("inf")),
                                            ("callback_every", -1), ("schedule", "linear")])
def test_train_loop_refuses_impossible_settings_before_any_step(setting, value):
    """NaN or infinite settings (lr=inf was accepted) would train weights into NaN: refused, naming the setting."""
    layer = torch.nn.Linear(2, 2)
    settings = {"steps": 2, "lr": 1e-2, setting: value}
    with pytest.raises(ValueError, match=setting):
        train_loop(layer, lambda step: pytest.fail("a step ran"), settings.pop("steps"), settings.pop("lr"),
                   progress=False, **settings)


@pytest.mark.parametrize("batch_size", [0, -1, 2.0, True])
def test_epoch_batches_refuses_a_batch_size_that_is_not_a_positive_integer(batch_size):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        epoch_batches([[1, 2], [3]], batch_size, 0, seed=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_train_loop_stops_at_the_first_non_finite_loss(bad):
    """A NaN or infinite loss stops the run at that step, before its update, with the step, the loss and the
    learning rate in the error and the advice to lower it: nothing is returned, so nothing can be cached."""
    seen = []

    def loss_at(step, w):
        seen.append(w.detach().clone())
        return w.sum() * (bad if step == 3 else 1.0)

    with pytest.raises(NonFiniteLossError, match=r"step 3 of 4: the loss is (nan|-?inf), at learning rate 0\.01\. "
                                                 r".*Lower the learning rate") as err:
        _linear_run(loss_at, schedule="constant")
    assert (err.value.step, err.value.lr) == (3, 0.01) and not math.isfinite(err.value.loss)
    assert len(seen) == 3 and all(torch.isfinite(w).all() for w in seen)


def test_train_loop_refuses_weights_that_a_non_finite_gradient_left():
    """A finite loss whose gradient is NaN (here sqrt at 0) turns the weights into NaN at the last step, where no
    next loss shows it: the loop checks the trained weights before returning them."""
    with pytest.raises(NonFiniteLossError, match="step 1 of 1: trained weight tensor 0 holds NaN"):
        _linear_run(lambda step, w: torch.sqrt(w - w.detach()).sum(), steps=1)
