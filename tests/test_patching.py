"""Activation patching and restoration: sanity checks that can fail, batched == looped, clear errors."""

import copy

import pandas as pd
import pytest
import torch
import transformers as tf_lib

from unlearn_utils import patching as P


@pytest.fixture(scope="module")
def pair(tiny):
    """The tiny world model and a copy whose decoder layers (only) are perturbed: a stand-in 'unlearned' model."""
    world, model, tok = tiny
    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in other.named_parameters():
            if ".layers." in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    prompts = [r["prompt"] for r in world.fact_rows() if r["is_question"]][:12]
    tf = P.teacher_forced_inputs(model, tok, prompts, max_new_tokens=3)
    return model, other, tok, tf


def test_teacher_forced_inputs(pair):
    model, other, tok, tf = pair
    assert len(tf) == 12 and tf.answer_mask.any(1).all()
    assert tf.answer_mask.sum(1).max() <= 3
    # the original reproduces its own answers under teacher forcing
    logits = model(input_ids=tf.input_ids, attention_mask=tf.attention_mask).logits
    assert P.answer_match(logits, tf).all()
    with pytest.raises(ValueError, match="empty"):
        P.teacher_forced_inputs(model, tok, [])


def test_krs_formula_by_hand():
    o = torch.zeros(1, 2, 3)
    u = torch.ones(1, 2, 3) * 2
    p = torch.ones(1, 2, 3)
    mask = torch.tensor([[True, False]])
    assert P.knowledge_recovery_score(o, p, u, mask).item() == pytest.approx(1 - 1 / 4)
    assert P.knowledge_recovery_score(o, o, u, mask).item() == pytest.approx(1.0)
    assert P.knowledge_recovery_score(o, u, u, mask).item() == pytest.approx(0.0)
    assert torch.isnan(P.knowledge_recovery_score(o, p, o, mask)).all()


def test_patching_own_activations_changes_nothing(pair):
    model, other, tok, tf = pair
    own = P.cache_activations(other, tok, tf)
    orig_logits = model(input_ids=tf.input_ids, attention_mask=tf.attention_mask).logits
    unl_logits = other(input_ids=tf.input_ids, attention_mask=tf.attention_mask).logits
    patches = [([k], comp) for k in range(2) for comp in P.ALL_COMPONENTS]
    for logits in P.run_patches(other, tok, tf, own, patches):
        krs = P.knowledge_recovery_score(orig_logits, logits, unl_logits, tf.answer_mask)
        assert krs.abs().max().item() < 1e-6


def test_patching_last_block_output_restores_everything(pair):
    model, other, tok, tf = pair
    last = other.config.num_hidden_layers - 1
    df = P.patch_sweep(model, other, tok, tf, components=["block"], layers=[last])
    assert df["krs"].iloc[0] == pytest.approx(1.0, abs=1e-5)
    assert df["recovered_accuracy"].iloc[0] == 1.0
    # and patching it somewhere that does not matter does not
    df0 = P.patch_sweep(model, other, tok, tf, components=["attn"], layers=[0])
    assert df0["krs"].iloc[0] < 0.99


def test_batched_equals_looped(pair):
    model, other, tok, tf = pair
    for positions in ("all", "answer"):
        a = P.patch_sweep(model, other, tok, tf, window=1, positions=positions, batched=True, invokes_per_trace=4)
        b = P.patch_sweep(model, other, tok, tf, window=1, positions=positions, batched=False)
        assert (a["krs"] - b["krs"]).abs().max() < 1e-5
        assert (a["recovered_accuracy"] == b["recovered_accuracy"]).all()
        assert a["krs"].std() > 0, "the patches differ from each other (not all the unpatched baseline)"


def test_restoration_restores_and_leaves_model_unchanged(pair):
    model, _, tok, tf = pair
    # a copy whose only change is layer 1's down projection (its value vectors)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.model.layers[1].mlp.down_proj.weight.add_(
            0.5 * torch.randn_like(other.model.layers[1].mlp.down_proj.weight))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    df = P.restoration_sweep(model, other, tok, tf, parts=("down",), window=1).set_index("layer")
    for k, v in other.state_dict().items():
        assert torch.equal(v, before[k]), "restoration puts the unlearned weights back"
    assert df.loc[1, "krs"] == pytest.approx(1.0, abs=1e-5)
    assert abs(df.loc[0, "krs"]) < 1e-6  # restoring an unchanged layer does nothing
    assert df.loc[1, "recovered_accuracy"] == 1.0


def test_reverse_direction_patches_the_unlearned_activations_into_the_original(pair):
    """direction="unlearned_to_original" is the forward sweep with the two models' roles swapped, number for number,
    and patching the unlearned model's activations moves the original toward the unlearned logits."""
    model, other, tok, tf = pair
    reverse = P.patch_sweep(model, other, tok, tf, components=["mlp", "both"], direction="unlearned_to_original")
    swapped = P.patch_sweep(other, model, tok, tf, components=["mlp", "both"])
    assert len(reverse) == 2 * other.config.num_hidden_layers
    pd.testing.assert_frame_equal(reverse, swapped)
    assert (reverse.krs > 0).all() and (reverse.krs <= 1 + 1e-6).all()


def test_bad_input(pair):
    model, other, tok, tf = pair
    n = other.config.num_hidden_layers
    with pytest.raises(IndexError, match="out of range"):
        P.patch_sweep(model, other, tok, tf, layers=[n])
    with pytest.raises(ValueError, match="larger than the model"):
        P.patch_sweep(model, other, tok, tf, window=n + 1)
    with pytest.raises(ValueError, match="Unknown component"):
        P.patch_sweep(model, other, tok, tf, components=["mlp_out"])
    cfg = tf_lib.GPT2Config(vocab_size=other.config.vocab_size, n_embd=32, n_layer=n, n_head=2)
    gpt2 = tf_lib.AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(ValueError, match="architecture"):
        P.patch_sweep(model, gpt2, tok, tf)
    smaller_vocab = copy.deepcopy(other)
    smaller_vocab.config.vocab_size = 10
    with pytest.raises(ValueError, match="vocabulary"):
        P.patch_sweep(model, smaller_vocab, tok, tf)
    empty = P.TeacherForced(tf.input_ids[:0], tf.attention_mask[:0], tf.answer_mask[:0], [], [])
    with pytest.raises(ValueError, match="empty"):
        P.patch_sweep(model, other, tok, empty)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2", "gpt_neox"])
def test_sweep_runs_on_every_family(tiny, family):
    """The same sweep through the architecture adapter on tiny random models of other families."""
    from test_arch import FAMILIES

    world, _, tok = tiny
    cfg = FAMILIES[family]()
    for attr in ("vocab_size",):
        setattr(cfg, attr, len(tok))
    torch.manual_seed(0)
    a = tf_lib.AutoModelForCausalLM.from_config(cfg).eval()
    b = copy.deepcopy(a)
    with torch.no_grad():
        for name, p in b.named_parameters():
            if "layers" in name or ".h." in name:
                p.add_(0.05 * torch.randn_like(p))
    prompts = [r["prompt"] for r in world.fact_rows() if r["is_question"]][:6]
    tfi = P.teacher_forced_inputs(a, tok, prompts, max_new_tokens=2)
    batched = P.patch_sweep(a, b, tok, tfi, batched=True)
    looped = P.patch_sweep(a, b, tok, tfi, batched=False)
    assert (batched["krs"] - looped["krs"]).abs().max() < 1e-5
    last = P.patch_sweep(a, b, tok, tfi, components=["block"], layers=[cfg.num_hidden_layers - 1])
    assert last["krs"].iloc[0] == pytest.approx(1.0, abs=1e-5)
    assert len(P.restoration_sweep(a, b, tok, tfi, parts=("down", "up", "attn"))) == cfg.num_hidden_layers


def test_side_effects_on_world_and_on_a_file(pair, tiny):
    """Side effects read whatever sets the data has: by attribute on the world; overall on a file's retain questions."""
    from unlearn_utils import evaluate as ev

    model, other, tok, _ = pair
    world = tiny[0]
    on_world = P.side_effects(model, other, tok, ev.eval_data(world, "forget05")).set_index("measure")
    assert any(m.startswith("retain accuracy: ") for m in on_world.index)
    assert {"topic accuracy", "utility perplexity", "retain paraphrase accuracy"} <= set(on_world.index)
    retain = world.facts("retain", "trained", "forget05").select_columns(["prompt", "answer"])
    data = ev.eval_data_from({"forget": world.facts("forget05", "trained").select_columns(["prompt", "answer"]),
                              "retain": retain})
    on_file = P.side_effects(model, other, tok, data).set_index("measure")
    assert list(on_file.index) == ["retain accuracy"]
    row = on_file.loc["retain accuracy"]
    assert row.original == ev.accuracy(model, tok, retain) and row.change == row.unlearned - row.original


def test_answer_agreement_is_the_share_of_matching_answers(pair):
    model, other, tok, tf = pair
    assert P.answer_agreement(model, tf) == 1.0  # the original gives its own answers
    logits = other(input_ids=tf.input_ids, attention_mask=tf.attention_mask).logits
    by_hand = P.answer_match(logits, tf).sum().item() / len(tf)
    assert P.answer_agreement(other, tf) == pytest.approx(by_hand)


def test_patch_and_restore_runs_both_sweeps_per_model(pair):
    model, other, tok, tf = pair
    sweeps, restores = P.patch_and_restore(model, {"a": other, "same": model}, tok, tf, window=2, parts=("down",))
    assert list(sweeps) == list(restores) == ["a", "same"]
    assert sweeps["a"].equals(P.patch_sweep(model, other, tok, tf, window=2))
    assert restores["a"].equals(P.restoration_sweep(model, other, tok, tf, parts=("down",), window=2))
    assert (restores["same"].component == "down").all()


def _sweeps_by_hand():
    """Two models' sweeps over 2 layers, with numbers that tell each row apart."""
    def sweep(k):
        return pd.DataFrame([{"layer": layer, "component": c, "krs": k + 0.1 * layer + i / 100,
                              "recovered_accuracy": k + layer}
                             for layer in (0, 1) for i, c in enumerate(("mlp", "attn", "both"))])

    def restore(k):
        return pd.DataFrame({"layer": [0, 1], "component": "down", "krs": [k - 0.5, k - 0.25],
                             "recovered_accuracy": [k / 2, k / 4]})

    return {"gd": sweep(0.0), "npo": sweep(1.0)}, {"gd": restore(0.0), "npo": restore(1.0)}


def test_krs_table_and_curves_by_hand():
    sweeps, restores = _sweeps_by_hand()
    table = P.krs_table(sweeps["npo"], restores["npo"], label="restore value vectors")
    assert list(table.index) == ["attn", "both", "mlp", "restore value vectors"] and list(table.columns) == [0, 1]
    assert table.loc["attn", 1] == pytest.approx(1.11) and table.loc["mlp", 0] == pytest.approx(1.0)
    assert list(table.loc["restore value vectors"]) == [0.5, 0.75]
    curves = P.krs_curves(sweeps, restores, components=["mlp", "attn"])
    assert list(curves) == ["gd: patch mlp", "gd: patch attn", "gd: restore down_proj",
                            "npo: patch mlp", "npo: patch attn", "npo: restore down_proj"]
    layers, krs = curves["npo: patch attn"]
    assert layers == [0, 1] and krs == pytest.approx([1.01, 1.11])
    assert curves["gd: restore down_proj"] == ([0, 1], [-0.5, -0.25])


def test_intervention_table_and_method_summary_by_hand():
    sweeps, restores = _sweeps_by_hand()
    table = P.intervention_table(sweeps, restores)
    assert list(table.columns) == ["method", "intervention", "layer", "krs", "recovered_accuracy"]
    assert len(table) == 2 * (3 + 1) * 2
    assert list(table.intervention[:8]) == ["patch mlp"] * 2 + ["patch attn"] * 2 + ["patch both"] * 2 + \
        ["restore down_proj"] * 2
    row = table[(table.method == "npo") & (table.intervention == "patch both") & (table.layer == 1)].iloc[0]
    assert row.krs == pytest.approx(1.12) and row.recovered_accuracy == 2.0
    summary = P.method_summary(table)
    assert list(summary.index) == ["gd", "npo"]
    gd = summary.loc["gd"]
    assert gd["best site"] == "patch both @ layer 1" and gd["best KRS"] == pytest.approx(0.12)
    assert gd["best recovered acc"] == 1.0
    assert gd["patch mlp, last layer"] == pytest.approx(0.1) and gd["restore down_proj, last layer"] == -0.25
    assert gd["max patch mlp"] == pytest.approx(0.1) and gd["max restore down_proj"] == -0.25
    assert P.method_summary(table, last_layer=0).loc["npo", "patch mlp, last layer"] == pytest.approx(1.0)
    from unlearn_utils import report

    found = report.verdicts_each("patching_restores", summary.to_dict(orient="index"))
    assert list(found.values()) == [False, True]  # gd: max patch mlp 0.1 <= 0.5; npo: 1.1 > 0.5 and restore 0.75 less
