"""Architecture adapter: where each model family keeps the parts the experiments touch.

For every supported family we name, as dotted paths from the top model:

* ``layers``: the list of decoder layers;
* ``mlp_down``: the MLP down projection inside a layer. Its *input* holds the "MLP coefficients" (how
  strongly each value vector is used) and its weight columns are the "value vectors";
* ``attn_out``: the attention output projection inside a layer (the attention block's contribution);
* ``final_norm`` and ``unembed``: the last norm and the output embedding (logit lens, vocabulary projection).

Paths are strings so the same adapter resolves on a plain ``torch`` model and on an nnsight wrapper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class UnsupportedArchitectureError(ValueError):
    """Raised when a model's family is not known to the adapter, or a named part is missing."""


@dataclass(frozen=True)
class Adapter:
    family: str
    layers: str          # path to the ModuleList of decoder layers
    mlp_down: str        # path inside a layer to the down projection (its input = MLP coefficients)
    mlp_up: tuple[str, ...]  # paths inside a layer to the up (and gate) projections
    attn_out: str        # path inside a layer to the attention output projection
    final_norm: str      # path to the final norm
    unembed: str         # path to the output embedding
    conv1d: bool = False  # GPT-2 stores Linear weights transposed ([in, out])

    # ---- resolving on a concrete model ---------------------------------------------------------
    def layer_list(self, model):
        return resolve(_unwrap(model), self.layers)

    def n_layers(self, model) -> int:
        return len(self.layer_list(model))

    def layer(self, model, i: int):
        n = self.n_layers(model)
        if not isinstance(i, int) or not -n <= i < n:
            raise IndexError(f"layer {i} is out of range: this model has {n} layers (0..{n - 1}).")
        return self.layer_list(model)[i]

    def down_proj(self, model, i: int):
        return resolve(self.layer(model, i), self.mlp_down)

    def attn_proj(self, model, i: int):
        return resolve(self.layer(model, i), self.attn_out)

    def value_vectors(self, model, i: int) -> torch.Tensor:
        """The down projection's value vectors of layer i as a [d_model, d_mlp] matrix (column j = vector j)."""
        w = self.down_proj(model, i).weight
        return w.T if self.conv1d else w

    def unembedding(self, model) -> torch.Tensor:
        """The output embedding as a [vocab, d_model] matrix."""
        return resolve(_unwrap(model), self.unembed).weight

    def norm(self, model):
        return resolve(_unwrap(model), self.final_norm)

    def d_mlp(self, model) -> int:
        return self.value_vectors(model, 0).shape[1]

    def layer_param_names(self, model, i: int, part: str) -> list[str]:
        """Full parameter names of layer i for ``part`` in {"down", "up", "attn"} (for restoration)."""
        prefix = f"{self.layers}.{i % self.n_layers(model)}"
        paths = {"down": [self.mlp_down], "up": list(self.mlp_up), "attn": [self.attn_out]}.get(part)
        if paths is None:
            raise KeyError(f"Unknown part {part!r}: choose 'down', 'up' or 'attn'.")
        names = []
        for p in paths:
            mod = resolve(model, f"{prefix}.{p}")
            names += [f"{prefix}.{p}.{n}" for n, _ in mod.named_parameters()]
        return names


_LLAMA_LIKE = dict(layers="model.layers", mlp_down="mlp.down_proj", mlp_up=("mlp.up_proj", "mlp.gate_proj"),
                   attn_out="self_attn.o_proj", final_norm="model.norm", unembed="lm_head")

ADAPTERS: dict[str, Adapter] = {
    **{fam: Adapter(family=fam, **_LLAMA_LIKE) for fam in
       ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo", "olmo2", "phi3")},
    "gpt2": Adapter(family="gpt2", layers="transformer.h", mlp_down="mlp.c_proj", mlp_up=("mlp.c_fc",),
                    attn_out="attn.c_proj", final_norm="transformer.ln_f", unembed="lm_head", conv1d=True),
    "gpt_neox": Adapter(family="gpt_neox", layers="gpt_neox.layers", mlp_down="mlp.dense_4h_to_h",
                        mlp_up=("mlp.dense_h_to_4h",), attn_out="attention.dense",
                        final_norm="gpt_neox.final_layer_norm", unembed="lm_head"),
}
# phi3 fuses gate and up into one matrix
ADAPTERS["phi3"] = Adapter(family="phi3", layers="model.layers", mlp_down="mlp.down_proj", mlp_up=("mlp.gate_up_proj",),
                           attn_out="self_attn.o_proj", final_norm="model.norm", unembed="lm_head")


def resolve(root, path: str):
    """Walk a dotted path (``"model.layers.3.mlp"``) with getattr / integer indexing."""
    obj = root
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def _unwrap(model):
    """The underlying transformers model of a peft or nnsight wrapper."""
    inner = model
    for attr in ("_model",):  # nnsight
        inner = getattr(inner, attr, inner)
    if hasattr(inner, "get_base_model"):  # peft
        inner = inner.get_base_model()
    return inner


def get_adapter(model) -> Adapter:
    """The adapter for a model (transformers, peft or nnsight), or a clear error naming what is missing."""
    inner = _unwrap(model)
    config = getattr(inner, "config", None)
    family = getattr(config, "model_type", None)
    if family not in ADAPTERS:
        raise UnsupportedArchitectureError(
            f"Architecture {family!r} is not supported yet. Supported families: {sorted(ADAPTERS)}. "
            "To add one, register an Adapter in unlearn_utils.arch.ADAPTERS naming its decoder layers, "
            "MLP down projection, attention output, final norm and unembedding.")
    adapter = ADAPTERS[family]
    for label, path in (("decoder layers", adapter.layers), ("final norm", adapter.final_norm),
                        ("unembedding", adapter.unembed)):
        try:
            resolve(inner, path)
        except (AttributeError, IndexError) as e:
            raise UnsupportedArchitectureError(
                f"{family} model has no {label} at {path!r} ({e}); this variant is not supported.") from None
    layer0 = resolve(inner, adapter.layers)[0]
    for label, path in (("MLP down projection", adapter.mlp_down), ("attention output", adapter.attn_out)):
        try:
            resolve(layer0, path)
        except AttributeError:
            raise UnsupportedArchitectureError(
                f"{family} layers have no {label} at {path!r}; this variant is not supported.") from None
    return adapter
