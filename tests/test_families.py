"""The single-site check on every supported family: change exactly one site of a tiny random-weight model, then
patching (or restoring) that site gives KRS 1 and every other site 0, on the unmerged LoRA wrapper as
``unlearn(..., lora=True)`` returns it and on the same model merged.

* Patching: the change is the last layer's MLP coefficients (its up / gate projection moves, through the LoRA
  adapter of that one module); patching the coefficients (or the whole block, or both sites) of that layer restores
  the original's logits exactly, patching anything else (a layer below it, the attention output) changes nothing.
* Restoration: the change is layer 0's down projection (its value vectors); restoring it gives the original back,
  restoring the other layer's, or the attention outputs, changes nothing.

The families' logit post-processing is switched on where it changes these small models' logits (Gemma's soft cap,
Granite's and Cohere's logit scaling: ``test_arch.family_config``), so mixing logits from before and after it fails.
"""

import copy
import warnings

import pytest
import torch
import transformers as tf

from test_arch import SUPPORTED, family_config
from unlearn_utils import patching as P
from unlearn_utils.arch import get_adapter, resolve

VOCAB, HIDDEN, INNER, LAYERS = 64, 32, 48, 2
TOL = 1e-4


@pytest.fixture(scope="module")
def tokenizer():
    """A word-level tokenizer over the tiny vocabulary (nnsight batches invokes through a tokenizer-aware wrapper)."""
    from tokenizers import Tokenizer, models

    vocab = {f"t{i}": i for i in range(VOCAB)}
    tok = tf.PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t3")),
                                     pad_token="t0", bos_token="t1", eos_token="t2", unk_token="t3")
    return tok


def _teacher_forced():
    """Three rows of random tokens; the last three positions of each predict its 'answer'."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, VOCAB, (3, 8), generator=gen)
    answer = torch.zeros_like(ids, dtype=torch.bool)
    answer[:, 4:7] = True
    return P.TeacherForced(ids, torch.ones_like(ids), answer, ["p"] * 3, ["a"] * 3)


def _changed_pair(family, site: str, layer: int):
    """(original, LoRA-wrapped copy) where exactly one module differs: its LoRA update is the only non-zero one.
    site "up": the layer's up (or fused gate-up) projection, i.e. its MLP coefficients; "down": its down projection."""
    from unlearn_utils.unlearning.methods import UnlearnConfig, _add_lora

    torch.manual_seed(0)
    original = tf.AutoModelForCausalLM.from_config(family_config(family, VOCAB, HIDDEN, INNER, LAYERS)).eval()
    wrapped = _add_lora(copy.deepcopy(original), UnlearnConfig.for_method("grad_diff", lora=True)).eval()
    a = get_adapter(wrapped)
    path = a.mlp_up[0] if site == "up" else a.mlp_down
    module = resolve(a.layer(wrapped, layer), path)
    with torch.no_grad():
        module.lora_B["default"].weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    return original, wrapped


def _variant(wrapped, variant):
    return wrapped if variant == "lora" else copy.deepcopy(wrapped).merge_and_unload()


@pytest.mark.parametrize("variant", ["lora", "merged"])
@pytest.mark.parametrize("family", SUPPORTED)
def test_patching_the_changed_site_alone_restores_it(family, variant, tokenizer):
    original, wrapped = _changed_pair(family, "up", LAYERS - 1)
    unlearned = _variant(wrapped, variant)
    assert type(unlearned).__name__.startswith("Peft") == (variant == "lora")
    tfi = _teacher_forced()
    for resume in (True, False):
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*cannot be restarted")  # resumed means resumed, no fallback
            df = P.patch_sweep(original, unlearned, tokenizer, tfi, components=P.ALL_COMPONENTS, resume=resume)
        for row in df.itertuples():
            hit = row.layer == LAYERS - 1 and row.component in ("mlp", "both", "block")
            assert row.krs == pytest.approx(1.0 if hit else 0.0, abs=TOL), (resume, row.layer, row.component, row.krs)


@pytest.mark.parametrize("variant", ["lora", "merged"])
@pytest.mark.parametrize("family", SUPPORTED)
def test_restoring_the_changed_site_alone_restores_it(family, variant, tokenizer):
    original, wrapped = _changed_pair(family, "down", 0)
    unlearned = _variant(wrapped, variant)
    before = {k: v.clone() for k, v in unlearned.state_dict().items()}
    tfi = _teacher_forced()
    for resume in (True, False):
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*cannot be restarted")
            down = P.restoration_sweep(original, unlearned, tokenizer, tfi, parts=("down",), resume=resume)
        assert down.set_index("layer").krs.tolist() == pytest.approx([1.0] + [0.0] * (LAYERS - 1), abs=TOL), resume
        attn = P.restoration_sweep(original, unlearned, tokenizer, tfi, parts=("attn",), resume=resume)
        assert attn.krs.tolist() == pytest.approx([0.0] * LAYERS, abs=TOL), resume
    after = unlearned.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items()), "restoration puts the unlearned weights back"
