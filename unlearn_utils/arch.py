"""Architecture adapter: where each model family keeps the parts the experiments touch.

For every supported family we name, as dotted paths from the top model:

* ``layers``: the list of decoder layers;
* ``mlp_down``: the MLP down projection inside a layer. Its *input* holds the "MLP coefficients" (how
  strongly each value vector is used) and its weight columns are the "value vectors";
* ``attn_out``: the attention output projection inside a layer (the attention block's contribution);
* ``final_norm`` and ``unembed``: the last norm and the output embedding (logit lens, vocabulary projection);
* what the model does to the unembedding's output before it returns its logits (Gemma 2's tanh soft cap, Granite's
  and Cohere's logit scaling): :meth:`Adapter.postprocess_logits`. Every logit the kit compares is taken after it.

Paths are strings so the same adapter resolves on a plain ``torch`` model and on an nnsight wrapper.

**Wrapped models, one rule.** A peft (LoRA) model, as ``unlearn(..., lora=True)`` returns it, and an nnsight wrapper
are read through the transformers model inside them (:func:`unwrap`): peft has put its LoRA layers *into* that
model, so running it runs the adapter too, and every path above resolves on it as on a plain model. A LoRA-wrapped
Linear counts as the Linear it wraps: its input is the same (the MLP coefficients of a down projection), its output
includes the LoRA update, and its weight is the merged one, W + (alpha / r) B A (:func:`effective_weight`), which is
what value vectors, restoration and quantization read. Quantizing a LoRA model quantizes that merged weight (a merged
copy, :func:`merged_copy`), never the LoRA matrices themselves.
"""

from __future__ import annotations

import copy
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
    # what the model does after the unembedding (each names a config attribute; None = nothing):
    logit_softcap: str | None = None     # logits = cap * tanh(logits / cap)  (Gemma 2 and 3)
    logit_multiplier: str | None = None  # logits = logits * scale            (Cohere)
    logit_divisor: str | None = None     # logits = logits / scaling          (Granite)

    # ---- resolving on a concrete model ---------------------------------------------------------
    def layer_list(self, model):
        return resolve(unwrap(model), self.layers)

    def n_layers(self, model) -> int:
        return len(self.layer_list(model))

    def layer(self, model, i: int):
        n = self.n_layers(model)
        if not isinstance(i, int) or not -n <= i < n:
            raise IndexError(f"layer {i} is out of range: this model has {n} layers (0..{n - 1}).")
        return self.layer_list(model)[i]

    def down_proj(self, model, i: int):
        """Layer i's down projection module (a LoRA-wrapped one on a peft model: hook it as the Linear itself)."""
        return resolve(self.layer(model, i), self.mlp_down)

    def attn_proj(self, model, i: int):
        return resolve(self.layer(model, i), self.attn_out)

    def value_vectors(self, model, i: int) -> torch.Tensor:
        """The down projection's value vectors of layer i as a [d_model, d_mlp] matrix (column j = vector j); on an
        unmerged LoRA model the merged weight W + delta W (a new tensor, not the parameter)."""
        w = effective_weight(self.down_proj(model, i))
        return w.T if self.conv1d else w

    def unembedding(self, model) -> torch.Tensor:
        """The output embedding as a [vocab, d_model] matrix."""
        return effective_weight(resolve(unwrap(model), self.unembed))

    def norm(self, model):
        """The final norm module (it may have no parameters: OLMo's layer norm)."""
        return resolve(unwrap(model), self.final_norm)

    def postprocess_logits(self, model, logits: torch.Tensor) -> torch.Tensor:
        """What the model does to the unembedding's output before returning it: Gemma 2 and 3's final soft cap
        (``final_logit_softcapping``), Cohere's ``logit_scale``, Granite's ``logits_scaling``; identity elsewhere."""
        inner = unwrap(model)
        cap = _setting(inner, self.logit_softcap)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        scale = _setting(inner, self.logit_multiplier)
        if scale is not None:
            logits = logits * scale
        divisor = _setting(inner, self.logit_divisor)
        if divisor is not None:
            logits = logits / divisor
        return logits

    def logits_from_hidden(self, model, hidden: torch.Tensor, final_norm: bool = True) -> torch.Tensor:
        """The model's logits for residual-stream states ``hidden`` [..., d_model]: final norm (unless False), the
        unembedding module and :meth:`postprocess_logits`, as the model computes them after its last layer."""
        inner = unwrap(model)
        h = resolve(inner, self.final_norm)(hidden) if final_norm else hidden
        return self.postprocess_logits(model, resolve(inner, self.unembed)(h))

    def d_mlp(self, model) -> int:
        return self.value_vectors(model, 0).shape[1]

    def part_modules(self, model, i: int, part: str) -> list:
        """The modules of layer i for ``part`` in {"down", "up", "attn"} (what restoration copies)."""
        paths = {"down": [self.mlp_down], "up": list(self.mlp_up), "attn": [self.attn_out]}.get(part)
        if paths is None:
            raise KeyError(f"Unknown part {part!r}: choose 'down', 'up' or 'attn'.")
        layer = self.layer(model, i % self.n_layers(model))
        return [resolve(layer, p) for p in paths]

    def layer_param_names(self, model, i: int, part: str) -> list[str]:
        """Full parameter names, as ``model.named_parameters()`` spells them (with a peft wrapper's
        ``base_model.model.`` prefix and a LoRA layer's own matrices), of layer i for ``part`` in {"down", "up",
        "attn"}."""
        mods = self.part_modules(model, i, part)
        names = {id(m): n for n, m in unwrap_nnsight(model).named_modules()}
        return [f"{names[id(m)]}.{n}" for m in mods for n, _ in m.named_parameters()]


def _setting(inner, name: str | None):
    """A post-processing number: the model's own attribute (Cohere copies ``logit_scale`` at init), else its
    (text) config's; None when the family has none or it is switched off."""
    if name is None:
        return None
    if hasattr(inner, name) and not isinstance(getattr(inner, name), torch.nn.Module):
        return getattr(inner, name)
    return getattr(_text_config(inner.config), name, None)


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


_LLAMA_LIKE = dict(layers="model.layers", mlp_down="mlp.down_proj", mlp_up=("mlp.up_proj", "mlp.gate_proj"),
                   attn_out="self_attn.o_proj", final_norm="model.norm", unembed="lm_head")

ADAPTERS: dict[str, Adapter] = {
    **{fam: Adapter(family=fam, **_LLAMA_LIKE) for fam in
       ("llama", "mistral", "qwen2", "qwen3", "gemma", "olmo", "olmo2", "olmo3", "smollm3", "stablelm")},
    **{fam: Adapter(family=fam, **_LLAMA_LIKE, logit_softcap="final_logit_softcapping")
       for fam in ("gemma2", "gemma3_text")},
    **{fam: Adapter(family=fam, **_LLAMA_LIKE, logit_multiplier="logit_scale") for fam in ("cohere", "cohere2")},
    "granite": Adapter(family="granite", **_LLAMA_LIKE, logit_divisor="logits_scaling"),
    # phi3 fuses gate and up into one matrix
    "phi3": Adapter(family="phi3", layers="model.layers", mlp_down="mlp.down_proj", mlp_up=("mlp.gate_up_proj",),
                    attn_out="self_attn.o_proj", final_norm="model.norm", unembed="lm_head"),
    "gpt2": Adapter(family="gpt2", layers="transformer.h", mlp_down="mlp.c_proj", mlp_up=("mlp.c_fc",),
                    attn_out="attn.c_proj", final_norm="transformer.ln_f", unembed="lm_head", conv1d=True),
    "gpt_neox": Adapter(family="gpt_neox", layers="gpt_neox.layers", mlp_down="mlp.dense_4h_to_h",
                        mlp_up=("mlp.dense_h_to_4h",), attn_out="attention.dense",
                        final_norm="gpt_neox.final_layer_norm", unembed="lm_head"),
}


def resolve(root, path: str):
    """Walk a dotted path (``"model.layers.3.mlp"``) with getattr / integer indexing."""
    obj = root
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


# ----------------------------------------------------------------------------------------------
# Wrapped models: peft (LoRA) and nnsight, one rule
# ----------------------------------------------------------------------------------------------
def unwrap(model):
    """The transformers model inside a peft or nnsight wrapper (the model itself when it is not wrapped). A peft
    model's inner model carries its LoRA layers: running it is running the peft model."""
    inner = unwrap_nnsight(model)
    return inner.get_base_model() if is_peft(inner) else inner



def is_peft(model) -> bool:
    """A peft wrapper (``PeftModel``), as ``get_peft_model`` and ``unlearn(..., lora=True)`` return it."""
    return hasattr(model, "get_base_model") and hasattr(model, "peft_config")


def is_lora_layer(module) -> bool:
    """A peft LoRA layer (it wraps the original Linear as ``base_layer`` and adds B A x)."""
    return hasattr(module, "base_layer") and hasattr(module, "lora_A")


def base_layer(module):
    """The Linear (or GPT-2 Conv1D) a LoRA layer wraps; any other module itself."""
    return module.get_base_layer() if is_lora_layer(module) else module


def _lora_active(module) -> list[str]:
    if not is_lora_layer(module) or module.merged or module.disable_adapters:
        return []  # merged: the base weight already holds the update; disabled: it adds nothing
    return [a for a in module.active_adapters if a in module.lora_A]


def effective_weight(module) -> torch.Tensor:
    """The weight a module computes with, in its own layout: a plain module's ``weight``; for a LoRA layer the base
    weight plus its active adapters' update (the weight ``merge_and_unload`` would give it)."""
    active = _lora_active(module)
    w = base_layer(module).weight
    if not active:
        return w
    return w + sum(module.get_delta_weight(a) for a in active).to(w.dtype)


def effective_bias(module) -> torch.Tensor | None:
    return getattr(base_layer(module), "bias", None)


@torch.no_grad()
def set_effective_weight(module, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """Make ``module`` compute with ``weight`` (and ``bias``): for a LoRA layer, the base weight becomes ``weight``
    and its active adapters' B matrices are zeroed, so their update is gone. Save the module's parameters first if
    it must be put back (restoration does)."""
    base = base_layer(module)
    base.weight.copy_(weight)
    if bias is not None and getattr(base, "bias", None) is not None:
        base.bias.copy_(bias)
    for a in _lora_active(module):
        module.lora_B[a].weight.zero_()


def unwrap_nnsight(model):
    """The model an nnsight wrapper holds (a peft model stays a peft model)."""
    return getattr(model, "_model", model)


def merged_copy(model):
    """A plain transformers model computing what ``model`` computes: a deep copy, with a peft model's LoRA updates
    merged into the weights (``merge_and_unload``). What quantization of a LoRA model acts on."""
    outer = unwrap_nnsight(model)
    if not is_peft(outer):
        return copy.deepcopy(outer)
    return _carried(outer, copy.deepcopy(outer).merge_and_unload())


def _carried(outer, merged):
    """``merged`` with what the kit set on the peft wrapper (its unlearning settings, its name)."""
    for attr in ("unlearn_config", "kit_name"):
        if attr in outer.__dict__:
            setattr(merged, attr, outer.__dict__[attr])
    return merged


def merge_in_place(model):
    """``model`` with its LoRA updates merged into its weights, in place (a peft model gives back the plain model
    inside it, which from then on is the one to use). A plain model is returned as it is."""
    outer = unwrap_nnsight(model)
    return _carried(outer, outer.merge_and_unload()) if is_peft(outer) else outer


def _check_peft(model) -> None:
    """Refuse peft adapters whose merged weight the kit does not compute (anything but plain LoRA)."""
    outer = unwrap_nnsight(model)
    if not is_peft(outer):
        return
    for name, cfg in outer.peft_config.items():
        kind = str(getattr(getattr(cfg, "peft_type", None), "value", getattr(cfg, "peft_type", None)))
        what = None
        if kind != "LORA":
            what = f"a {kind} adapter"
        elif getattr(cfg, "use_dora", False):
            what = "a DoRA adapter (its merged weight is rescaled per column)"
        elif getattr(cfg, "lora_bias", False):
            what = "a LoRA adapter with its own biases (lora_bias=True)"
        if what is not None:
            raise UnsupportedArchitectureError(
                f"The peft model's adapter {name!r} is {what}; the kit reads plain LoRA adapters only (their merged "
                "weight W + (alpha / r) B A). Merge it first: model = model.merge_and_unload().")


# ----------------------------------------------------------------------------------------------
# Finding the adapter, or saying what is missing
# ----------------------------------------------------------------------------------------------
def _missing(root, path: str) -> str | None:
    """None when ``path`` resolves on ``root``, else the first step that does not ("'layers' (after 'model')")."""
    obj, done = root, []
    for part in path.split("."):
        try:
            obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
        except (AttributeError, IndexError, KeyError, TypeError):
            return f"{part!r}" + (f" (after {'.'.join(done)!r})" if done else "")
        done.append(part)
    return None


def _experts(inner, config) -> tuple[int | None, str | None, str | None]:
    """(number of experts, path of the expert modules, path of their router) in layer 0 of a mixture-of-experts
    model, as far as they are found; (None, None, None) for a dense model."""
    cfg = _text_config(config)
    n = next((v for v in (getattr(cfg, a, None) for a in ("num_local_experts", "num_experts", "n_routed_experts",
                                                           "moe_num_experts"))
              if isinstance(v, int) and not isinstance(v, bool) and v > 1), None)
    experts = router = None
    paths = [p for p in dict.fromkeys(a.layers for a in ADAPTERS.values()) if _missing(inner, p) is None]
    layers = resolve(inner, paths[0]) if paths else None
    if layers is not None and len(layers):
        experts = next((name for name, _ in layers[0].named_modules() if name.split(".")[-1] == "experts"), None)
        if experts is not None:
            parent = experts.rsplit(".", 1)[0] + "." if "." in experts else ""
            router = next((parent + r for r in ("gate", "router") if _missing(layers[0], parent + r) is None), None)
    if n is None and experts is None:
        return None, None, None
    return n, experts, router


def _layer_lists(inner) -> list[str]:
    """Paths of ModuleLists as long as the model is deep (where an unknown layout keeps its decoder layers)."""
    depth = getattr(_text_config(inner.config), "num_hidden_layers", None)
    return [n for n, m in inner.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m) == depth and n]


def _refuse_moe(family, inner, config) -> None:
    n, experts, router = _experts(inner, config)
    if n is None and experts is None:
        return
    dense = "mlp.down_proj"
    many = f"{n} experts" if n else "several experts"
    where = f" ('{experts}' in each layer)" if experts else ""
    via = f" through a router ('{router}')" if router else ""
    raise UnsupportedArchitectureError(
        f"mixture-of-experts MLPs are not supported: each {family} layer sends every token{via} to a few of its "
        f"{many}{where}, each with its own down projection, so there is no single down projection whose input is the "
        f"layer's MLP coefficients (looked for {dense!r} in layer 0 and found the experts instead). Patching the "
        "coefficients, restoring value vectors and locating concept vectors all need that one matrix per layer; "
        "use a dense model (same kit, e.g. a Llama-, Qwen- or Mistral-style checkpoint).")


def _refuse_unknown(family, inner) -> None:
    """The unknown family's layout against each known one: what was found, which path was looked for and missing."""
    layouts = {}
    for a in ADAPTERS.values():
        layouts.setdefault((a.layers, a.mlp_down, a.attn_out, a.final_norm, a.unembed), a.family)
    best = None
    for (layers, down, attn, norm, unembed), fam in layouts.items():
        checks = [("decoder layers", layers, inner), ("final norm", norm, inner), ("unembedding", unembed, inner)]
        top_missing = [(label, path, _missing(inner, path)) for label, path, root in checks]
        found = [(label, path) for label, path, miss in top_missing if miss is None]
        missing = [(label, path) for label, path, miss in top_missing if miss is not None]
        if _missing(inner, layers) is None and len(resolve(inner, layers)):
            layer0 = resolve(inner, layers)[0]
            for label, path in (("MLP down projection", down), ("attention output", attn)):
                (found if _missing(layer0, path) is None else missing).append((f"{label} in each layer", path))
        else:
            missing += [("MLP down projection in each layer", down), ("attention output in each layer", attn)]
        if best is None or len(found) > len(best[1]):
            best = (fam, found, missing)
    fam, found, missing = best
    lists = [p for p in _layer_lists(inner) if p not in [path for _, path in found]]
    hint = f" Its decoder layers appear to be at {lists[0]!r}." if lists else ""
    text = getattr(_text_config(inner.config), "model_type", None)
    if text != family and text in ADAPTERS:
        hint += (f" It is a multimodal model whose language model is a {text!r} model; that family is supported "
                 "on its own (its text-only checkpoints).")
    got = "; found " + ", ".join(f"{label} at {path!r}" for label, path in found) if found else ""
    raise UnsupportedArchitectureError(
        f"Architecture {family!r} ({type(inner).__name__}) is not supported yet. Its layout is closest to "
        f"{fam}'s{got}; not found: " + ", ".join(f"{label} at {path!r}" for label, path in missing) + "." + hint +
        f" Supported families: {sorted(ADAPTERS)}. A family with the same paths may still compute its logits "
        "differently (Granite and Cohere scale them), so the kit does not guess: register an Adapter in "
        "unlearn_utils.arch.ADAPTERS naming its decoder layers, MLP down projection, attention output, final norm, "
        "unembedding and any logit post-processing.")


def get_adapter(model) -> Adapter:
    """The adapter for a model (transformers, peft or nnsight), or a clear error naming what is missing."""
    inner = unwrap(model)
    config = getattr(inner, "config", None)
    family = getattr(config, "model_type", None)
    _check_peft(model)
    if family not in ADAPTERS:
        if config is not None:
            _refuse_moe(family, inner, config)
            _refuse_unknown(family, inner)
        raise UnsupportedArchitectureError(
            f"{type(inner).__name__} has no transformers config, so its family is unknown; the kit reads "
            f"transformers causal LMs of the families {sorted(ADAPTERS)}.")
    adapter = ADAPTERS[family]
    for label, path in (("decoder layers", adapter.layers), ("final norm", adapter.final_norm),
                        ("unembedding", adapter.unembed)):
        miss = _missing(inner, path)
        if miss is not None:
            raise UnsupportedArchitectureError(
                f"This {family} model ({type(inner).__name__}) has no {label} at {path!r} (no {miss}); this "
                "variant is not supported.")
    layers = resolve(inner, adapter.layers)
    if not len(layers):
        raise UnsupportedArchitectureError(f"This {family} model has no decoder layers ({adapter.layers!r} is empty).")
    for label, path in (("MLP down projection", adapter.mlp_down), ("attention output", adapter.attn_out)):
        miss = _missing(layers[0], path)
        if miss is not None:
            _refuse_moe(family, inner, config)
            raise UnsupportedArchitectureError(
                f"This {family} model's layers have no {label} at {path!r} (no {miss} in "
                f"'{adapter.layers}.0'); this variant is not supported.")
    return adapter
