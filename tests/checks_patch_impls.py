"""Learner-style implementations of the notebook 02 patching exercise (kept in a file: nnsight reads trace source)."""

from nnsight import NNsight


def patch_right(unlearned, coef, layer, ids, att):
    nn = NNsight(unlearned)
    with nn.trace(input_ids=ids, attention_mask=att):
        nn.model.layers[layer].mlp.down_proj.input = coef
        out = nn.lm_head.output.save()
    return out


def patch_wrong_layer(unlearned, coef, layer, ids, att):
    nn = NNsight(unlearned)
    other = (layer + 1) % 3
    with nn.trace(input_ids=ids, attention_mask=att):
        nn.model.layers[other].mlp.down_proj.input = coef
        out = nn.lm_head.output.save()
    return out


def patch_output_instead(unlearned, coef, layer, ids, att):
    """Writes the coefficients' projection into the MLP output instead of its coefficients (not the same site)."""
    nn = NNsight(unlearned)
    with nn.trace(input_ids=ids, attention_mask=att):
        nn.model.layers[layer].mlp.up_proj.output = coef
        out = nn.lm_head.output.save()
    return out


def no_patch(unlearned, coef, layer, ids, att):
    return unlearned(input_ids=ids, attention_mask=att).logits
