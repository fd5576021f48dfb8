"""Activation patching and restoration: sanity checks that can fail, batched == looped, clear errors."""

import copy
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import transformers as tf_lib

from unlearn_utils import patching as P


@pytest.fixture(scope="module")
def pair(tiny, perturbed_layers):
    """The tiny world model and a copy whose decoder layers (only) are perturbed: a stand-in 'unlearned' model."""
    world, model, tok = tiny
    other = perturbed_layers(model)
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
    a, b = _family_pair(tok, cfg)
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


# ---- the resumed sweep: the same numbers as rerunning the whole model for every patch ----------------------------
def _same_sweeps(a, b, tol=1e-5):
    assert list(a.layer) == list(b.layer) and list(a.component) == list(b.component)
    assert (a["krs"] - b["krs"]).abs().max() < tol
    assert (a["krs_std"] - b["krs_std"]).abs().max() < tol if "krs_std" in a else True
    assert (a["recovered_accuracy"] == b["recovered_accuracy"]).all()


@pytest.mark.parametrize("window", [1, 2])
@pytest.mark.parametrize("positions", ["all", "answer", "own"])
def test_resumed_sweep_equals_the_full_rerun(pair, window, positions):
    model, other, tok, tf = pair
    resumed = P.patch_sweep(model, other, tok, tf, components=P.ALL_COMPONENTS, window=window, positions=positions)
    full = P.patch_sweep(model, other, tok, tf, components=P.ALL_COMPONENTS, window=window, positions=positions,
                         resume=False)
    _same_sweeps(resumed, full)
    assert resumed["krs"].std() > 0.01, "the patches differ from each other"
    reverse = dict(direction="unlearned_to_original", components=["mlp"], window=window, positions=positions)
    _same_sweeps(P.patch_sweep(model, other, tok, tf, **reverse),
                 P.patch_sweep(model, other, tok, tf, resume=False, **reverse))


def test_resumed_logits_equal_the_nnsight_patches(pair):
    """Logit by logit at the answer positions, in any order of patches and with patches run together."""
    model, other, tok, tf = pair
    cache = P.cache_activations(model, tok, tf)
    inputs = P.capture_layer_inputs(other, tf)
    patches = [([1], "block"), ([0, 1], "both"), ([1], "mlp"), ([0], "attn"), ([0], "mlp")]
    together = P.resumed_logits(other, inputs, patches, cache)
    for (layers, comp), got in zip(patches, together):
        want = P.run_patches(other, tok, tf, cache, [(layers, comp)], batched=False)[0]
        want = want[torch.arange(len(tf))[:, None], inputs.positions]
        assert (got - want).abs().max() < 1e-5, (layers, comp)
        alone = P.resumed_logits(other, inputs, [(layers, comp)], cache)[0]
        assert (alone - got).abs().max() < 1e-5
    unpatched = other(input_ids=tf.input_ids, attention_mask=tf.attention_mask).logits
    assert (together[0] - P.resumed_logits(other, inputs, [([0], None)])[0]).abs().max() > 1e-3
    assert (inputs.logits - unpatched[torch.arange(len(tf))[:, None], inputs.positions]).abs().max() < 1e-5


@pytest.mark.parametrize("window", [1, 2])
def test_resumed_restoration_equals_the_full_rerun(pair, window):
    model, other, tok, tf = pair
    before = {k: v.clone() for k, v in other.state_dict().items()}
    for parts in (("down",), ("down", "up", "attn")):
        resumed = P.restoration_sweep(model, other, tok, tf, parts=parts, window=window)
        full = P.restoration_sweep(model, other, tok, tf, parts=parts, window=window, resume=False)
        _same_sweeps(resumed, full)
        assert resumed["krs"].std() > 0.01
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())


def _family_pair(tok, cfg):
    torch.manual_seed(0)
    a = tf_lib.AutoModelForCausalLM.from_config(cfg).eval()
    b = copy.deepcopy(a)
    with torch.no_grad():
        for name, p in b.named_parameters():
            if "layers" in name or ".h." in name:
                p.add_(0.05 * torch.randn_like(p))
    return a, b


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma", "olmo2", "gpt2", "gpt_neox"])
def test_resumed_equals_full_rerun_on_every_family(tiny, family):
    from test_arch import FAMILIES

    world, _, tok = tiny
    cfg = FAMILIES[family]()
    cfg.vocab_size = len(tok)
    a, b = _family_pair(tok, cfg)
    prompts = [r["prompt"] for r in world.fact_rows() if r["is_question"]][:5]
    tfi = P.teacher_forced_inputs(a, tok, prompts, max_new_tokens=2)
    assert P.resumable(b)
    for window in (1, 2):
        _same_sweeps(P.patch_sweep(a, b, tok, tfi, components=P.ALL_COMPONENTS, window=window),
                     P.patch_sweep(a, b, tok, tfi, components=P.ALL_COMPONENTS, window=window, resume=False))
    _same_sweeps(P.restoration_sweep(a, b, tok, tfi, parts=("down", "attn"), window=2),
                 P.restoration_sweep(a, b, tok, tfi, parts=("down", "attn"), window=2, resume=False))


def test_a_soft_capped_model_resumes_and_compares_capped_logits(tiny):
    """Gemma 2 caps its logits after the final norm (here at 0.5, about the size of this model's logits, so the cap
    bends them): the resumed runner applies the cap too, so the sweeps resume, with the full rerun's numbers; and
    every logit compared is a capped one, so a patch that changes nothing scores 0 and the last block 1 either way
    (mixing the unembedding's uncapped output with the model's capped one gave a no-op patch a KRS below 0)."""
    world, _, tok = tiny
    prompts = [r["prompt"] for r in world.fact_rows() if r["is_question"]][:4]
    cfg = tf_lib.Gemma2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=8, final_logit_softcapping=0.5)
    a, b = _family_pair(tok, cfg)
    assert P.resumable(b)
    tfi = P.teacher_forced_inputs(a, tok, prompts, max_new_tokens=2)
    inputs = P.capture_layer_inputs(b, tfi)
    assert (P.resumed_logits(b, inputs, [([0], None)])[0] - inputs.logits).abs().max() < 1e-5
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*cannot be restarted")
        resumed = P.patch_sweep(a, b, tok, tfi, components=["mlp", "block"])
    full = P.patch_sweep(a, b, tok, tfi, components=["mlp", "block"], resume=False)
    _same_sweeps(resumed, full)
    for df in (resumed, full):
        assert df.krs[df.component == "block"].iloc[-1] == pytest.approx(1.0, abs=1e-5)
    # a patch that changes nothing: the unlearned model's own activations, by both runners
    own = P.cache_activations(b, tok, tfi)
    base = b(input_ids=tfi.input_ids, attention_mask=tfi.attention_mask).logits
    orig = a(input_ids=tfi.input_ids, attention_mask=tfi.attention_mask).logits
    assert (own["logits"] - base).abs().max() < 1e-6, "the cached logits are the model's output, capped"
    for logits in P.run_patches(b, tok, tfi, own, [([1], "mlp")]):
        assert P.knowledge_recovery_score(orig, logits, base, tfi.answer_mask).abs().max() < 1e-6
    for r in (True, False):
        df = P.restoration_sweep(b, b, tok, tfi, resume=r)
        assert df.krs.isna().all()  # nothing to recover: the same model, capped on both sides


def test_a_model_that_cannot_resume_falls_back_to_the_full_rerun(tiny):
    """A model that does more than its layers, final norm, unembedding and family post-processing (here a hook on
    its body's output) is caught by the check the sweep runs first: the full rerun, a warning, the same numbers."""
    world, _, tok = tiny
    prompts = [r["prompt"] for r in world.fact_rows() if r["is_question"]][:4]
    from test_arch import FAMILIES

    cfg = FAMILIES["llama"]()
    cfg.vocab_size = len(tok)
    a, b = _family_pair(tok, cfg)
    assert P.resumable(b)
    handle = b.model.register_forward_hook(lambda m, i, out: out.__setitem__(
        "last_hidden_state", out.last_hidden_state * 0.5) or out)
    try:
        tfi = P.teacher_forced_inputs(a, tok, prompts, max_new_tokens=2)
        with pytest.warns(UserWarning, match="cannot be restarted"):
            fell_back = P.patch_sweep(a, b, tok, tfi, components=["attn"])
        _same_sweeps(fell_back, P.patch_sweep(a, b, tok, tfi, components=["attn"], resume=False), tol=1e-12)
        with pytest.warns(UserWarning, match="cannot be restarted"):
            P.restoration_sweep(a, b, tok, tfi)
    finally:
        handle.remove()


# ---- recovered accuracy: the answer's own tokens, not the punctuation the original wrote after them -------------
class _CharTokenizer:
    """Whole words, punctuation and line breaks as tokens (enough for :func:`P._own_tokens`)."""

    vocab = [" Dublin", ".", "\n", " Nep", "ali", ",", " which", "<eos>", " St", " Petersburg"]
    all_special_ids = [7]

    def decode(self, ids):
        return "".join(self.vocab[i] for i in ids)


def test_the_answers_own_tokens():
    tok = _CharTokenizer()
    assert P._own_tokens(tok, [0, 1, 2, 2], None, set(tok.all_special_ids)) == [0]         # " Dublin.\n\n"
    assert P._own_tokens(tok, [3, 4, 5, 6], None, set(tok.all_special_ids)) == [0, 1]      # " Nepali, which"
    assert P._own_tokens(tok, [2, 0, 1], None, set(tok.all_special_ids)) == [1]            # "\n Dublin."
    assert P._own_tokens(tok, [8, 1, 9, 1], "St. Petersburg", set()) == [0, 1, 2]           # the gold answer's span
    assert P._own_tokens(tok, [8, 1, 9, 1], None, set()) == [0]                             # without it: "St"
    assert P._own_tokens(tok, [2, 2], None, set()) == [0, 1]                                # nothing else: every token
    assert P._own_tokens(tok, [7], None, set(tok.all_special_ids)) == [0]


def test_recovered_accuracy_counts_the_answer_not_its_trailing_punctuation():
    """The bug: a patch that brings back " Dublin" but not the "\\n\\n" the original wrote after "Dublin." scored 0.
    Here the logits predict the answer's own token and the period right, and a wrong line break: recovered."""
    ids = torch.tensor([[5, 0, 1, 2, 2]])  # prompt token 5, then " Dublin" "." "\n" "\n"
    answer = torch.tensor([[True, True, True, True, False]])  # positions 0..3 predict tokens 1..4
    own = torch.tensor([[True, False, False, False, False]])  # position 0 predicts " Dublin"
    tf = P.TeacherForced(ids, torch.ones_like(ids), answer, ["p"], [" Dublin.\n\n"], own)
    logits = torch.zeros(1, 5, 10)
    logits[0, 0, 0] = logits[0, 1, 1] = logits[0, 2, 2] = 1.0
    logits[0, 3, 6] = 1.0  # " which" instead of the second "\n"
    assert P.answer_match(logits, tf).tolist() == [True]
    old = P.TeacherForced(ids, torch.ones_like(ids), answer, ["p"], [" Dublin.\n\n"])  # no core: every position
    assert P.answer_match(logits, old).tolist() == [False]
    logits[0, 0, 0], logits[0, 0, 3] = 0.0, 1.0  # " Nep": the answer itself is wrong
    assert P.answer_match(logits, tf).tolist() == [False]


def test_teacher_forced_core_mask_on_the_world(pair):
    model, _, tok, tf = pair
    assert tf.core_mask is not None and (tf.core_mask <= tf.answer_mask).all() and tf.core_mask.any(1).all()
    gold = P.teacher_forced_inputs(model, tok, tf.prompts, max_new_tokens=3, gold=[a.strip() for a in tf.answers])
    assert torch.equal(gold.core_mask, gold.answer_mask) and torch.equal(gold.input_ids, tf.input_ids)
    with pytest.raises(ValueError, match="gold answers"):
        P.teacher_forced_inputs(model, tok, tf.prompts, gold=["x"])


# ---- SmolLM2-135M (when fetched): a 2-layer window, 3 questions ------------------------------------------------
def _have_smol():
    from unlearn_utils.models import REAL_MODELS, downloads_dir

    return (downloads_dir() / REAL_MODELS["smollm2-135m"].wheel).exists()


@pytest.fixture(scope="module")
def smol_pair(cache):
    if not _have_smol():
        pytest.skip("the real model is not fetched: run `make setup`")
    from unlearn_utils.models import load_model

    model, tok = load_model("smollm2-135m")
    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for k in (27, 28, 29):
            for p in other.model.layers[k].parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    prompts = ["The capital of France is", "The capital of Ireland is", "The chemical symbol for sodium is"]
    tf = P.teacher_forced_inputs(model, tok, prompts, gold=["Paris", "Dublin", "Na"])
    return model, other, tok, tf


def test_resumed_sweep_on_smollm2(smol_pair):
    model, other, tok, tf = smol_pair
    assert [a.split(".")[0] for a in tf.answers] == [" Paris", " Dublin", " Na"]
    assert tf.core_mask.sum(1).tolist() == [1, 1, 1] and (tf.answer_mask.sum(1) > 1).all()  # " Dublin" of " Dublin."
    settings = dict(components=P.ALL_COMPONENTS, window=2, layers=[28, 29])
    resumed = P.patch_sweep(model, other, tok, tf, **settings)
    _same_sweeps(resumed, P.patch_sweep(model, other, tok, tf, resume=False, **settings))
    assert resumed.krs[resumed.component == "block"].iloc[-1] == pytest.approx(1.0, abs=1e-5)
    assert resumed.recovered_accuracy[resumed.component == "block"].iloc[-1] == 1.0
    restore = dict(parts=("down", "attn"), window=2, layers=[29])
    _same_sweeps(P.restoration_sweep(model, other, tok, tf, **restore),
                 P.restoration_sweep(model, other, tok, tf, resume=False, **restore))


# ---- a LoRA model straight from unlearn(..., lora=True): the peft wrapper, not merged -------------------------------
def test_a_lora_model_from_unlearn_in_the_sweeps_and_the_audit(tiny):
    """The sweeps and the audit's patching probe read the unmerged wrapper as its merged model (the same numbers);
    the audit's quantization probe quantizes the merged weights, never the LoRA matrices (whose rank-8 inputs once
    forced per-channel grids)."""
    from unlearn_utils import audit as A
    from unlearn_utils import quantize as Q
    from unlearn_utils.unlearning import unlearn

    world, model, tok = tiny
    forget = world.facts("forget05", "trained").select(range(12)).select_columns(["prompt", "answer"])
    retain = world.facts("retain", "trained").select(range(24)).select_columns(["prompt", "answer"])
    wrapped, _ = unlearn(model, tok, forget, retain, "grad_diff", steps=3, lr=3e-2, lora=True, progress=False)
    assert type(wrapped).__name__.startswith("Peft")
    merged = copy.deepcopy(wrapped).merge_and_unload()
    tfi = P.teacher_forced_inputs(model, tok, list(forget["prompt"])[:8], max_new_tokens=2)
    def close(a, b):  # W x + B A x and (W + B A) x round differently: a near tie may flip one question's arg-max
        assert list(a.layer) == list(b.layer) and list(a.component) == list(b.component)
        assert (a.krs - b.krs).abs().max() < 1e-4
        assert (a.recovered_accuracy - b.recovered_accuracy).abs().max() <= 1 / len(tfi) + 1e-9

    for kw in (dict(), dict(resume=False)):
        close(P.patch_sweep(model, wrapped, tok, tfi, window=2, **kw),
              P.patch_sweep(model, merged, tok, tfi, window=2, **kw))
        close(P.restoration_sweep(model, wrapped, tok, tfi, parts=("down", "up", "attn"), **kw),
              P.restoration_sweep(model, merged, tok, tfi, parts=("down", "up", "attn"), **kw))
    assert Q.default_group_size(wrapped) == Q.default_group_size(merged) == Q.default_group_size(model)
    assert list(Q.quantizable_linears(wrapped)) == list(Q.quantizable_linears(merged))
    q_wrapped, q_merged = A.quantized(wrapped, 4), A.quantized(merged, 4)
    ids = tfi.input_ids
    assert (q_wrapped(ids).logits - q_merged(ids).logits).abs().max() < 1e-5
    data = {"forget": forget, "retain": retain}
    report = A.audit(model, wrapped, tok, data, probes=("quantization", "patching"), bits=(4,), native_grid=False,
                     progress=False)
    again = A.audit(model, merged, tok, data, probes=("quantization", "patching"), bits=(4,), native_grid=False,
                    progress=False)
    pd.testing.assert_frame_equal(report.table, again.table, atol=1 / len(forget) + 1e-9)
    close(report.patching, again.patching)


def test_one_string_where_a_list_is_asked_is_refused(pair):
    """components="mlp" would be read letter by letter ("Unknown component 'm'"): refused with the fix."""
    original, unlearned, tok, tf = pair
    with pytest.raises(ValueError, match=r"components='mlp' is one string; give a list, e.g. components=\['mlp'\]"):
        P.patch_sweep(original, unlearned, tok, tf, components="mlp")
    with pytest.raises(ValueError, match=r"parts='down' is one string"):
        P.restoration_sweep(original, unlearned, tok, tf, parts="down")
    with pytest.raises(ValueError, match="components='attn' is one string"):
        P.intervention_table({}, {}, components="attn")


# ----------------------------------------------------------------------------------------------
# The unlearning depth score
# ----------------------------------------------------------------------------------------------
def test_depth_from_drops_by_hand():
    knowledge = P.LayerDrops(full=torch.zeros(3), drops=torch.tensor([[0.5, 0.01, 1.0],    # layer 1 below tau
                                                                      [0.02, 0.03, 0.0],   # no encoding layer
                                                                      [0.2, 0.4, 0.0]]))
    unlearned = P.LayerDrops(full=torch.zeros(3), drops=torch.tensor([[0.25, 9.0, 2.0],    # 0.5 and 1 (clipped)
                                                                      [1.0, 1.0, 1.0],
                                                                      [-0.3, 0.1, 5.0]]))  # 0 (clipped) and 0.25
    d = P.depth_from_drops(knowledge, unlearned, threshold=0.05)
    first = (0.5 * 0.5 + 1.0 * 1.0) / (0.5 + 1.0)
    third = (0.2 * 0.0 + 0.4 * 0.25) / (0.2 + 0.4)
    assert d.per_question[0].item() == pytest.approx(first)
    assert torch.isnan(d.per_question[1])
    assert d.per_question[2].item() == pytest.approx(third)
    assert d.score == pytest.approx((first + third) / 2) and d.n_defined == 2
    assert d.layers.encodes_share.tolist() == pytest.approx([2 / 3, 1 / 3, 1 / 3])
    assert d.layers.retain_drop.tolist() == pytest.approx([0.72 / 3, 0.44 / 3, 1.0 / 3])
    nothing = P.depth_from_drops(P.LayerDrops(torch.zeros(1), torch.zeros(1, 3)),
                                 P.LayerDrops(torch.zeros(1), torch.ones(1, 3)))
    assert np.isnan(nothing.score) and nothing.n_defined == 0
    with pytest.raises(ValueError, match="different questions or layers"):
        P.depth_from_drops(knowledge, P.LayerDrops(torch.zeros(2), torch.zeros(2, 3)))
    with pytest.raises(ValueError, match="threshold"):
        P.depth_from_drops(knowledge, unlearned, threshold=-1)


def test_layer_drops_at_the_last_layer_are_the_other_models_answer_by_hand(pair):
    """Overwriting the last layer's output at the positions that predict the answer's own tokens gives those
    positions the other model's logits (the two share the final norm and the unembedding): the drop is the
    original's mean log-probability of its answer tokens minus the other model's, computed here by hand."""
    model, other, tok, tf = pair
    drops = P.layer_drops(model, other, tok, tf)
    n = model.config.num_hidden_layers
    assert drops.drops.shape == (len(tf), n) and drops.full.shape == (len(tf),)
    targets = torch.roll(tf.input_ids, -1, dims=1)
    own = tf.scored_mask

    def score(m):
        logp = torch.log_softmax(m(input_ids=tf.input_ids, attention_mask=tf.attention_mask).logits, -1)
        tok_logp = logp.gather(-1, targets[..., None]).squeeze(-1)
        return torch.stack([tok_logp[i][own[i]].mean() for i in range(len(tf))])

    with torch.no_grad():
        full, theirs = score(model), score(other)
    assert torch.allclose(drops.full, full, atol=1e-5)
    assert torch.allclose(drops.drops[:, n - 1], full - theirs, atol=1e-5)
    assert drops.drops.abs().max() > 1e-3, "the perturbed layers must change the answers"
    again = P.layer_drops(model, other, tok, tf, resume=False)
    assert torch.allclose(again.drops, drops.drops, atol=1e-5) and torch.allclose(again.full, drops.full, atol=1e-5)


def test_depth_score_is_zero_for_the_original_and_one_for_the_retain_model_itself(pair):
    """Ground truth at both ends: the original's own hidden states change nothing (depth 0); the retain model's
    reproduce the retain model's effect exactly (depth 1)."""
    model, other, tok, tf = pair
    knowledge = P.layer_drops(model, other, tok, tf)
    assert (knowledge.drops > 0.05).any(), "some layer of the stand-in retain model must carry an answer"
    intact = P.depth_score(model, model, tok, tf, knowledge=knowledge)
    erased = P.depth_score(model, other, tok, tf, retain_model=other)
    assert intact.n_defined == erased.n_defined == int((knowledge.drops > 0.05).any(1).sum())
    assert intact.score == pytest.approx(0.0, abs=1e-4)
    assert erased.score == pytest.approx(1.0, abs=1e-4)
    assert list(erased.layers.columns) == ["layer", "retain_drop", "unlearned_drop", "encodes_share"]


def test_depth_score_says_what_it_needs(pair):
    model, other, tok, tf = pair
    with pytest.raises(ValueError, match="needs a retain model"):
        P.depth_score(model, other, tok, tf)
    short = P.teacher_forced_inputs(model, tok, tf.prompts[:3], max_new_tokens=3)
    with pytest.raises(ValueError, match="same teacher-forced inputs"):
        P.depth_score(model, other, tok, short, knowledge=P.layer_drops(model, other, tok, tf))
    with pytest.raises(ValueError, match="positions must be one of"):
        P.patch_sweep(model, other, tok, tf, positions="answers")


def test_basis_mismatch_by_hand_and_when_the_score_is_readable():
    knowledge = P.LayerDrops(torch.zeros(2), torch.tensor([[1.0, 3.0], [2.0, -2.0]]))  # negatives count as 0
    control = P.LayerDrops(torch.zeros(3), torch.tensor([[0.5, 0.0], [0.0, 0.1], [-1.0, 0.2]]))
    assert P.basis_mismatch(knowledge, control) == pytest.approx((0.8 / 6) / (6.0 / 4))
    d = P.depth_from_drops(knowledge, knowledge)
    assert d.comparable is None  # not measured
    d.basis_mismatch = 0.49
    assert d.comparable is True
    d.basis_mismatch = P.BASIS_MISMATCH_AT
    assert d.comparable is False


def test_depth_score_with_control_questions(pair):
    model, other, tok, tf = pair
    control_tf = P.teacher_forced_inputs(model, tok, tf.prompts[6:], max_new_tokens=3)
    d = P.depth_score(model, other, tok, tf, retain_model=other, control=control_tf)
    control = P.layer_drops(model, other, tok, control_tf)
    assert d.basis_mismatch == pytest.approx(P.basis_mismatch(P.layer_drops(model, other, tok, tf), control))
    with pytest.raises(ValueError, match="control questions need the retain model"):
        P.depth_score(model, other, tok, tf, knowledge=P.layer_drops(model, other, tok, tf), control=control_tf)


def test_krs_is_undefined_where_the_logits_differ_only_by_float_rounding():
    torch.manual_seed(0)
    original = torch.randn(2, 3, 11)
    mask = torch.ones(2, 3, dtype=torch.bool)
    rounding = original * (1 + 1e-7 * torch.randn_like(original))  # another way to compute the same model
    changed = original + 1e-3 * torch.randn_like(original)           # a small real change
    assert P.knowledge_recovery_score(original, rounding, rounding, mask).isnan().all()
    krs = P.knowledge_recovery_score(original, original, changed, mask)
    assert torch.allclose(krs, torch.ones(2))  # patched back to the original: everything recovered
