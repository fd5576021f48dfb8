"""Concept vectors (ConceptVectors, Hong et al., arXiv 2406.11614): locate, measure, ablate.

An MLP *value vector* is one column of a layer's down projection: whatever the MLP writes into the residual
stream is a weighted sum of these columns. Projecting a column through the unembedding (the "logit lens" on a
parameter) shows which tokens it promotes. A column whose top tokens are one topic's words is a
**concept vector**.

The paper's questions, on a world where we know every topic's words:
1. Do such vectors exist, and are they causal (noise on one hurts its topic, not others)?
2. Does fine-tuning unlearning change them (cosine, L2, Jaccard of top tokens), or only stop using them?
3. Does ablating the vector itself ("Needle") remove the topic with less collateral damage?

The ConceptVectors file format is read in :mod:`unlearn_utils.concept_files`; Needle, an unlearning method, is
:func:`unlearn_utils.unlearning.needle`. This module keeps the analysis: vocabulary projection, locating and
validating concept vectors, their change under unlearning, and the topic probes.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd
import torch

from .arch import get_adapter
from .concept_files import FILE_PROBES, ConceptSet
from .evaluate import accuracy, answer_scores
from .world import World


# ----------------------------------------------------------------------------------------------
# Vocabulary projection
# ----------------------------------------------------------------------------------------------
def check_column(model, layer: int, column: int) -> None:
    ad = get_adapter(model)
    n = ad.n_layers(model)
    if not isinstance(layer, (int, np.integer)) or not 0 <= layer < n:
        raise IndexError(f"layer {layer} is out of range: this model has {n} layers (0..{n - 1}).")
    d_mlp = ad.d_mlp(model)
    if not isinstance(column, (int, np.integer)) or not 0 <= column < d_mlp:
        raise IndexError(f"column {column} is out of range: layer {layer}'s MLP has {d_mlp} value vectors "
                         f"(0..{d_mlp - 1}).")


def value_vector(model, layer: int, column: int) -> torch.Tensor:
    """A copy of value vector ``column`` of ``layer`` (a [d_model] tensor): column of the down projection."""
    check_column(model, layer, column)
    return get_adapter(model).value_vectors(model, int(layer))[:, int(column)].detach().float().clone()


@torch.no_grad()
def project_to_vocab(model, vectors: torch.Tensor, final_norm: bool = False) -> torch.Tensor:
    """Logits that ``vectors`` ([d_model] or [d_model, n]) promote: unembedding @ vector -> [vocab] or [vocab, n].

    final_norm=True gives the logits the model would output were each vector its last residual stream: its final
    norm (with or without parameters: OLMo's has none), the unembedding and the family's post-processing (Gemma 2's
    soft cap, Granite's and Cohere's logit scaling; none of them changes the ranking of the tokens). The paper
    projects the raw vector (final_norm=False): unembedding @ vector.
    """
    ad = get_adapter(model)
    E = ad.unembedding(model).detach()
    v = vectors.detach().float().to(E.device)
    single = v.dim() == 1
    if single:
        v = v[:, None]
    if v.shape[0] != E.shape[1]:
        raise ValueError(f"vectors have size {v.shape[0]} but the model's hidden size is {E.shape[1]}.")
    if final_norm:
        norm = ad.norm(model)
        dtype = next(norm.parameters(), E).dtype  # the model's dtype where the norm has no parameters
        v = norm(v.T[:, None, :].to(dtype)).float()[:, 0, :].T
    out = E.float() @ v
    if final_norm:
        out = ad.postprocess_logits(model, out)
    return out[:, 0] if single else out


def _check_k(k: int, vocab_size: int) -> None:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive whole number, got {k!r}.")
    if k > vocab_size:
        raise ValueError(f"k={k} is larger than the vocabulary ({vocab_size} tokens); choose k <= {vocab_size}.")


def top_tokens(model, tokenizer, vector: torch.Tensor, k: int = 20, final_norm: bool = False) -> list[str]:
    """The ``k`` tokens a vector promotes most, best first."""
    logits = project_to_vocab(model, vector, final_norm)
    _check_k(k, logits.shape[0])
    return tokenizer.convert_ids_to_tokens(logits.topk(k).indices.tolist())


# ----------------------------------------------------------------------------------------------
# Locating concept vectors
# ----------------------------------------------------------------------------------------------
def topic_words(world: World, topic: str) -> list[str]:
    """The words of a world topic (its cluster), or a clear error for an unknown topic."""
    for t in world.topics:
        if t["name"] == topic:
            return list(t["words"])
    raise KeyError(f"Topic {topic!r} is not in this world. Its topics are: {[t['name'] for t in world.topics]}.")


def word_ids(tokenizer, words) -> list[int]:
    vocab = tokenizer.get_vocab()
    ids = []
    for w in words:
        for cand in (w, "Ġ" + w, "▁" + w):  # word-level, GPT-2 byte-level and sentencepiece spellings
            if cand in vocab:
                ids.append(vocab[cand])
                break
    return sorted(set(ids))


@torch.no_grad()
def overlap_table(model, tokenizer, topics: dict[str, list[str]], k: int = 20, layers=None,
                  final_norm: bool = False) -> pd.DataFrame:
    """For every (layer, column): how many of each topic's words are in the column's top-``k`` tokens.

    Returns a long table with layer, column, topic, hits, overlap = hits / min(k, number of topic words)
    (1.0 = the top-k is as full of the topic's words as it can be) and score = the mean z-score of the topic's
    words in the column's projection (breaks ties between columns with equal hits).
    """
    ad = get_adapter(model)
    n = ad.n_layers(model)
    layers = list(range(n)) if layers is None else list(layers)
    for layer in layers:
        if not 0 <= layer < n:
            raise IndexError(f"layer {layer} is out of range: this model has {n} layers (0..{n - 1}).")
    vocab = ad.unembedding(model).shape[0]
    _check_k(k, vocab)
    member = torch.zeros(len(topics), vocab, dtype=torch.bool)
    sizes = []
    for i, words in enumerate(topics.values()):
        ids = word_ids(tokenizer, words)
        member[i, ids] = True
        sizes.append(max(1, min(k, len(ids))))
    frames = []
    for layer in layers:
        V = ad.value_vectors(model, layer)
        logits = project_to_vocab(model, V, final_norm).cpu()  # [vocab, d_mlp]
        top = logits.topk(k, dim=0).indices  # [k, d_mlp]
        hits = member[:, top].sum(1)  # [topics, d_mlp]
        z = (logits - logits.mean(0)) / logits.std(0).clamp_min(1e-8)
        score = (member.float() @ z) / member.sum(1, keepdim=True).clamp_min(1)  # mean z-score of the topic's words
        for i, name in enumerate(topics):
            frames.append(pd.DataFrame({"layer": layer, "column": np.arange(V.shape[1]), "topic": name,
                                        "hits": hits[i].numpy(), "overlap": hits[i].numpy() / sizes[i],
                                        "score": score[i].numpy()}))
    return pd.concat(frames, ignore_index=True)


def locate_concept_vectors(model, tokenizer, world_or_topics, k: int = 20, layers=None, final_norm: bool = False,
                           top: int = 1) -> pd.DataFrame:
    """For each topic, the value vector(s) whose top-``k`` projected tokens overlap the topic's words most.

    world_or_topics: a :class:`World` or a dict ``{topic: [words]}``. Returns one row per topic (``top`` rows
    with top > 1): topic, layer, column, hits, overlap, and the vector's top tokens.
    """
    topics = ({t["name"]: t["words"] for t in world_or_topics.topics} if hasattr(world_or_topics, "topics")
              else dict(world_or_topics))
    if not topics:
        raise ValueError("No topics given: pass a World or a non-empty {topic: [words]} dict.")
    table = overlap_table(model, tokenizer, topics, k, layers, final_norm)
    best = (table.sort_values(["topic", "hits", "score"], ascending=[True, False, False])
            .groupby("topic", sort=False).head(top))
    best = best.set_index("topic").loc[list(topics)].reset_index()
    ad = get_adapter(model)
    best["tokens"] = [top_tokens(model, tokenizer, ad.value_vectors(model, int(r.layer))[:, int(r.column)], k,
                                 final_norm) for r in best.itertuples()]
    return best.reset_index(drop=True)


@torch.no_grad()
def given_vectors(model, tokenizer, concepts: ConceptSet, k: int = 20, final_norm: bool = False) -> pd.DataFrame:
    """The file's vector per concept, scored like :func:`locate_concept_vectors`'s rows: hits and overlap of its
    top-``k`` tokens with the concept's words, and the tokens (a check that the file matches this model)."""
    rows = []
    vocab = get_adapter(model).unembedding(model).shape[0]
    _check_k(k, vocab)
    for t in concepts.topics:
        layer, column = concepts.vectors[t["name"]]
        check_column(model, layer, column)
        top_ids = project_to_vocab(model, value_vector(model, layer, column), final_norm).topk(k).indices.tolist()
        ids = set(word_ids(tokenizer, t["words"]))
        tokens = tokenizer.convert_ids_to_tokens(top_ids)
        hits = len(ids & set(top_ids))
        rows.append({"topic": t["name"], "layer": layer, "column": column, "hits": hits,
                     "overlap": hits / max(1, min(k, len(ids))), "tokens": tokens})
    return pd.DataFrame(rows)


def concept_vectors(model, tokenizer, source, k: int = 20, top: int = 1, final_norm: bool = False,
                    layers=None) -> pd.DataFrame:
    """The concept vector(s) per topic: located by :func:`locate_concept_vectors` (best ``top`` per topic, searching
    ``layers``, None = all) on the world or a real model's categories (a :class:`CategorySet`), or, for a
    ConceptVectors file (a :class:`ConceptSet`), the file's own vector per concept scored the same way
    (:func:`given_vectors`; ``top`` and ``layers`` do not apply). Columns: topic, layer, column, hits, overlap,
    tokens."""
    if isinstance(source, ConceptSet):
        return given_vectors(model, tokenizer, source, k=k, final_norm=final_norm)
    return locate_concept_vectors(model, tokenizer, source, k=k, layers=layers, top=top, final_norm=final_norm)


def search_layers(model, layers=None, smoke: bool = False, smoke_layers: int = 4) -> list[int]:
    """The layers whose value vectors are searched: ``layers`` when given, else all of them; in smoke mode only the
    last ``smoke_layers`` (projecting every column of a 30-layer model takes about a minute on 2 cores)."""
    n = get_adapter(model).n_layers(model)
    if layers is not None:
        return list(layers)
    return list(range(max(0, n - smoke_layers), n)) if smoke else list(range(n))


def location_summary(located: pd.DataFrame, min_overlap: float = 0.3) -> dict:
    """How well one vector per topic was found: ``share`` of topics whose vector's overlap is >= ``min_overlap``,
    ``median_overlap``, and ``layers`` = {layer: number of topics whose vector sits there} (by layer)."""
    return {"share": float((located.overlap >= min_overlap).mean()),
            "median_overlap": float(located.overlap.median()),
            "layers": located.layer.value_counts().sort_index().to_dict()}


def same_vectors(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """Share of topics (row by row) for which two vector tables name the same (layer, column), e.g. located with
    and without the final norm."""
    return float(((a.layer == b.layer) & (a.column == b.column)).mean())


def located_table(located: pd.DataFrame, n_tokens: int = 10) -> pd.DataFrame:
    """The located vectors to read: topic, layer, column, hits, overlap and the first ``n_tokens`` top tokens
    joined by spaces."""
    return located.assign(tokens=located.tokens.map(lambda t: " ".join(t[:n_tokens])))[
        ["topic", "layer", "column", "hits", "overlap", "tokens"]]


def topic_vectors(candidates: pd.DataFrame, topic: str) -> list[tuple[int, int]]:
    """The (layer, column) of each of ``topic``'s vectors in a :func:`concept_vectors` table, best first (what
    Needle ablates)."""
    vectors = candidates[candidates.topic == topic]
    return list(zip(vectors.layer.astype(int), vectors.column.astype(int)))


# ----------------------------------------------------------------------------------------------
# Topic evaluation and causal validation
# ----------------------------------------------------------------------------------------------
def topic_scores(model, tokenizer, world: World, kinds=("question", "completion")) -> pd.DataFrame:
    """Per topic: accuracy and mean answer log-probability on its questions / completions."""
    rows = [r for r in world.topic_rows() if r["kind"] in kinds]
    df = pd.DataFrame(rows)
    s = answer_scores(model, tokenizer, list(df["prompt"]), list(df["answer"]))
    df["correct"], df["logprob"] = s["correct"].to_numpy(), s["logprob"].to_numpy()
    return df.groupby("topic", sort=False).agg(accuracy=("correct", "mean"), logprob=("logprob", "mean"))


def down_proj_column(model, layer: int, column: int):
    """(down-projection weight, index of value vector ``column`` in it) after checking the range. On a LoRA model,
    the base layer's weight: a change to it changes the merged value vector by the same amount."""
    from .arch import base_layer

    check_column(model, layer, column)
    ad = get_adapter(model)
    w = base_layer(ad.down_proj(model, int(layer))).weight
    return w, ((slice(None), int(column)) if not ad.conv1d else (int(column), slice(None)))


@torch.no_grad()
def add_noise(w: torch.Tensor, idx, scale: float, generator: torch.Generator, relative: bool) -> None:
    """Add Gaussian noise to ``w[idx]``: norm ``scale`` x the vector's norm (relative) or std ``scale`` per
    coordinate."""
    if not scale >= 0:
        raise ValueError(f"noise scale must be non-negative, got {scale}.")
    col = w[idx]
    noise = torch.randn(col.shape, generator=generator).to(col)
    w[idx] += noise / noise.norm() * col.norm() * scale if relative else noise * scale


@contextlib.contextmanager
def noised_vector(model, layer: int, column: int, scale: float, seed: int = 0, relative: bool = True):
    """Temporarily add Gaussian noise to one value vector (restored on exit, even after an error).

    relative=True: the noise has norm ``scale`` x the vector's norm (scale 1 = noise as large as the vector);
    relative=False: per-coordinate standard deviation ``scale`` (the paper's sigma, e.g. 0.1 for a 7B model).
    """
    w, idx = down_proj_column(model, layer, column)
    saved = w.data[idx].clone()
    add_noise(w, idx, scale, torch.Generator().manual_seed(seed), relative)
    try:
        yield
    finally:
        w.data[idx] = saved


def causal_effect(model, tokenizer, world: World, topic: str, layer: int, column: int, scale: float = 3.0,
                  seeds=(0,), relative: bool = True, clean: pd.DataFrame | None = None) -> dict:
    """Noise on one vector: drop of its topic's answer log-probability and accuracy versus the other topics'.

    Returns clean/noisy accuracy and log-prob for the target and the unrelated topics, and ``ratio`` =
    target log-prob drop / unrelated log-prob drop (per question; > 1 = the vector is specific to its topic).
    clean: the model's :func:`topic_scores`, when already computed (validating every topic needs them once).
    """
    topic_words(world, topic)
    clean = topic_scores(model, tokenizer, world) if clean is None else clean
    noisy = []
    for s in seeds:
        with noised_vector(model, layer, column, scale, seed=s, relative=relative):
            noisy.append(topic_scores(model, tokenizer, world))
    noisy = sum(noisy) / len(noisy)
    other = [t for t in clean.index if t != topic]
    drop_t = float(clean.loc[topic, "logprob"] - noisy.loc[topic, "logprob"])
    drop_u = float((clean.loc[other, "logprob"] - noisy.loc[other, "logprob"]).mean())
    return {"topic": topic, "layer": int(layer), "column": int(column), "scale": scale,
            "target_acc_clean": float(clean.loc[topic, "accuracy"]),
            "target_acc_noisy": float(noisy.loc[topic, "accuracy"]),
            "unrelated_acc_clean": float(clean.loc[other, "accuracy"].mean()),
            "unrelated_acc_noisy": float(noisy.loc[other, "accuracy"].mean()),
            "target_logprob_drop": drop_t, "unrelated_logprob_drop": drop_u,
            "ratio": drop_t / max(drop_u, 1e-6)}


def causal_effects(model, tokenizer, world: World, vectors: pd.DataFrame, scale: float = 3.0, seeds=(0,),
                   relative: bool = True) -> pd.DataFrame:
    """:func:`causal_effect` of each row of ``vectors`` (topic, layer, column), one row each; the model's clean
    topic scores are computed once and shared."""
    clean = topic_scores(model, tokenizer, world)
    return pd.DataFrame([causal_effect(model, tokenizer, world, r.topic, r.layer, r.column, scale=scale, seeds=seeds,
                                       relative=relative, clean=clean) for r in vectors.itertuples()])


def causal_summary(effects: pd.DataFrame, min_ratio: float = 3.0) -> dict:
    """Over all topics of a :func:`causal_effects` table: mean log-prob drop of the ``target_drop`` topic and of the
    ``unrelated_drop`` topics, their ``ratio`` (mean over mean, not a mean of ratios) and ``share_specific`` = share of
    topics whose own ratio is >= ``min_ratio``."""
    target, unrelated = effects.target_logprob_drop.mean(), effects.unrelated_logprob_drop.mean()
    return {"target_drop": float(target), "unrelated_drop": float(unrelated),
            "ratio": float(target / max(unrelated, 1e-9)),
            "share_specific": float((effects.ratio >= min_ratio).mean())}


def choose_topic(effects: pd.DataFrame, topic: str | None = None, min_ratio: float = 3.0) -> str:
    """``topic`` when given, else the topic whose vector hurt its own topic most (largest target log-prob drop)
    among those that passed validation (ratio >= ``min_ratio``), or among all topics when none passed."""
    valid = effects[effects.ratio >= min_ratio]
    return topic or (valid if len(valid) else effects).sort_values("target_logprob_drop").topic.iloc[-1]


# ----------------------------------------------------------------------------------------------
# Parametric change
# ----------------------------------------------------------------------------------------------
def jaccard(a, b) -> float:
    """|A ∩ B| / |A ∪ B| of two token collections (1 = same set; 0 = disjoint; two empty sets count as 1)."""
    a, b = set(a), set(b)
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def vector_change(original, unlearned, tokenizer, layer: int, column: int, words=None, k: int = 20,
                  final_norm: bool = False) -> dict:
    """How one value vector moved under unlearning.

    cosine and L2 distance between the two vectors; Jaccard of their top-k token sets (each through its own
    model's unembedding, as in the paper); topic_tokens_kept = share of the original top-k's topic words that are
    still in the unlearned top-k (the paper's "related tokens rate"; needs ``words``).
    """
    check_column(original, layer, column)
    check_column(unlearned, layer, column)
    v0, v1 = value_vector(original, layer, column), value_vector(unlearned, layer, column)
    if v0.shape != v1.shape:
        raise ValueError(f"The two models have different hidden sizes ({v0.shape[0]} vs {v1.shape[0]}).")
    t0 = set(top_tokens(original, tokenizer, v0, k, final_norm))
    t1 = set(top_tokens(unlearned, tokenizer, v1, k, final_norm))
    out = {"cosine": float(torch.nn.functional.cosine_similarity(v0, v1, dim=0).clamp(max=1.0)),
           "l2": float((v0 - v1).norm()), "jaccard": jaccard(t0, t1)}
    if words is not None:
        related = t0 & set(words)
        out["topic_tokens_kept"] = len(t1 & related) / len(related) if related else float("nan")
    return out


def people_facts(source, about: int = 400):
    """The people's facts that unlearning a topic should keep: every n-th trained phrasing of the retain people's
    facts, n chosen to leave at least ``about`` of them; None for a ConceptVectors file or a real model's categories
    (they have no people)."""
    if isinstance(source, (ConceptSet, CategorySet)):
        return None
    people = source.facts("retain", phrasings="trained")
    return people.select(range(0, len(people), max(1, len(people) // about)))


@torch.no_grad()
def unlearning_table(models: dict, original, tokenizer, source, topic: str, layer: int, column: int, people=None,
                     k: int = 20) -> pd.DataFrame:
    """One row per model ({name: model}): accuracy on the ``target topic``, mean accuracy on the ``unrelated
    topics``, ``people facts acc`` (NaN without ``people``), and how the topic's vector (layer, column) moved from
    the original (:func:`vector_change`: cosine, l2, jaccard, topic_tokens_kept)."""
    words = topic_words(source, topic)
    rows = []
    for name, model in models.items():
        ts = topic_scores(model, tokenizer, source)
        change = vector_change(original, model, tokenizer, layer, column, words, k=k)
        rows.append({"model": name, "target topic acc": ts.loc[topic, "accuracy"],
                     "unrelated topics acc": ts.drop(topic).accuracy.mean(),
                     "people facts acc": accuracy(model, tokenizer, people) if people is not None else float("nan"),
                     **change})
    return pd.DataFrame(rows).set_index("model")


def method_rows(table: pd.DataFrame, methods) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the fine-tuning ``methods``' rows, the Needle rows: those whose name starts with "needle") of a
    :func:`unlearning_table`."""
    return table.loc[methods], table.loc[[i for i in table.index if i.startswith("needle")]]


def describe_findings(table: pd.DataFrame, probes: pd.DataFrame, methods, topic: str, k: int = 20) -> str:
    """The paragraph under notebook 03's verdicts: whether the original knew the topic (when it did not), the range
    of the fine-tuned vector's cosine and Jaccard, the best fine-tuning and Needle rows, and the highest target
    accuracy any probe (columns of ``probes``) brings back for each method."""
    ft, needle_rows = method_rows(table, methods)
    best_needle = needle_rows.sort_values("target topic acc").iloc[0]
    best_ft = ft.sort_values("unrelated topics acc").iloc[-1]
    probe_back = {m: float(probes.loc[m].max()) for m in methods}
    lines = []
    if not table.loc["original", "target topic acc"] >= 0.5:
        lines.append(f"The original answers only {table.loc['original', 'target topic acc']:.0%} of '{topic}' before "
                     "unlearning: the forgetting verdicts are not measured (None).")
    lines.append(f"Fine-tuning: cosine of the '{topic}' vector to the original {ft.cosine.min():.3f}-"
                 f"{ft.cosine.max():.3f}, Jaccard of top-{k} tokens {ft.jaccard.min():.2f}-{ft.jaccard.max():.2f}, "
                 f"while target accuracy fell to {ft['target topic acc'].max():.0%} (worst method).")
    lines.append(f"Best fine-tuning method for unrelated topics: {best_ft.name} (target "
                 f"{best_ft['target topic acc']:.0%}, unrelated {best_ft['unrelated topics acc']:.0%}); best Needle: "
                 f"{best_needle.name} (target {best_needle['target topic acc']:.0%}, unrelated "
                 f"{best_needle['unrelated topics acc']:.0%}).")
    lines.append("Highest target accuracy any probe brings back after fine-tuning: "
                 + str({m: f"{v:.0%}" for m, v in probe_back.items()}))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Topic unlearning data and probes
# ----------------------------------------------------------------------------------------------
def topic_forget_retain(world: World, topic: str, n_retain_topics: int | None = 1, n_retain_facts: int = 600,
                        seed: int = 0):
    """Forget = the topic's text, questions and completions; retain = other topics' text + some people's facts.

    n_retain_topics: how many other topics go into the retain set (the paper retains ONE other concept's text;
    None = all other topics, a much stronger guard for the unrelated topics we measure).

    Returns ``(forget_rows, retain_rows, retained_topics)``. Rows have ``text`` (plain LM text), so every method
    of :func:`unlearn_utils.unlearning.unlearn` that trains on text works (not ``idk``, which needs questions).
    """
    if isinstance(world, CategorySet):  # a real model's categories: their facts, as questions
        return world.forget_retain(topic, n_retain_topics, n_retain_facts, seed)
    topic_words(world, topic)
    rng = np.random.default_rng(seed)
    others = [t["name"] for t in world.topics if t["name"] != topic]
    if n_retain_topics is not None:
        if not 0 <= n_retain_topics <= len(others):
            raise ValueError(f"n_retain_topics must be between 0 and {len(others)}, got {n_retain_topics}.")
        others = sorted(rng.choice(others, size=n_retain_topics, replace=False).tolist())
    forget, retain = [], []
    for t in world.topics:
        if t["name"] == topic:
            forget += [{"text": s} for s in t["sentences"]]
        elif t["name"] in others:
            retain += [{"text": s} for s in t["sentences"]]
    for r in world.topic_rows():
        if r["topic"] == topic:
            forget.append({"text": r["prompt"] + " " + r["answer"]})
        elif r["topic"] in others:
            retain.append({"text": r["prompt"] + " " + r["answer"]})
    facts = [r for r in world.fact_rows() if r["trained_phrasing"] and not r["holdout_person"]]
    for i in (rng.choice(len(facts), size=min(n_retain_facts, len(facts)), replace=False) if facts else []):
        r = facts[i]
        retain.append({"text": r["prompt"] + " " + r["answer"] + ("" if r["is_question"] else " .")})
    return forget, retain, others


PARAPHRASE_QUESTION = "Question: What is the partner of the {a} in {topic} ? Answer:"
ROLE_PLAY_PREFIX = "People who love {topic} talk about the {b} and the {c} ."


def probe_rows(world: World, probe: str = "plain", seed: int = 0) -> list[dict]:
    """Topic questions under a probe that tells suppression from removal.

    plain: the trained question; paraphrase: an unseen wording; in_context: two of the topic's sentences first
    (the topic's text given in context); role_play: a "people who love <topic>" framing first.
    """
    if hasattr(world, "probe_rows"):  # a ConceptSet has its own (plain, in_context)
        return world.probe_rows(probe, seed)
    probes = ("plain", "paraphrase", "in_context", "role_play")
    if probe not in probes:
        raise KeyError(f"Unknown probe {probe!r}: choose one of {probes}.")
    rng = np.random.default_rng(seed)
    rows = []
    for r in world.topic_rows():
        if r["kind"] != "question":
            continue
        t = next(t for t in world.topics if t["name"] == r["topic"])
        others = [w for w in t["words"] if w not in (r["word"], r["answer"])]
        prompt = r["prompt"]
        if probe == "paraphrase":
            prompt = PARAPHRASE_QUESTION.format(a=r["word"], topic=r["topic"])
        elif probe == "in_context":
            sents = [s for s in t["sentences"] if r["answer"] not in s.split()]
            picks = rng.choice(len(sents), size=min(2, len(sents)), replace=False)
            prompt = " ".join(sents[i] for i in picks) + " " + prompt
        elif probe == "role_play":
            b, c = rng.choice(others, size=2, replace=False)
            prompt = ROLE_PLAY_PREFIX.format(topic=r["topic"], b=b, c=c) + " " + prompt
        rows.append({**r, "prompt": prompt, "probe": probe})
    return rows


def probe_scores(model, tokenizer, world: World, topic: str, probes=None, seed: int = 0) -> pd.DataFrame:
    """Accuracy on the target topic's questions and on the other topics', under each probe (default: all the
    source has: plain, paraphrase, in_context, role_play on the world; plain, in_context for a ConceptSet; plain,
    paraphrase, in_context for a CategorySet)."""
    topic_words(world, topic)
    if probes is None:
        probes = (FILE_PROBES if isinstance(world, ConceptSet) else CATEGORY_PROBES if isinstance(world, CategorySet)
                  else ("plain", "paraphrase", "in_context", "role_play"))
    out = []
    for probe in probes:
        df = pd.DataFrame(probe_rows(world, probe, seed))
        df["correct"] = answer_scores(model, tokenizer, list(df["prompt"]), list(df["answer"]))["correct"].to_numpy()
        out.append({"probe": probe, "target": float(df.loc[df.topic == topic, "correct"].mean()),
                    "unrelated": float(df.loc[df.topic != topic, "correct"].mean())})
    return pd.DataFrame(out).set_index("probe")


def probe_table(models: dict, tokenizer, world: World, topic: str, probes=None, seed: int = 0) -> pd.DataFrame:
    """Target-topic accuracy of each model ({name: model}, rows) under each probe (columns "target, <probe>"), from
    :func:`probe_scores`."""
    scores = {name: probe_scores(model, tokenizer, world, topic, probes=probes, seed=seed)
              for name, model in models.items()}
    table = pd.concat({n: p["target"] for n, p in scores.items()}, axis=1).T
    table.columns = [f"target, {c}" for c in table.columns]
    return table


# ----------------------------------------------------------------------------------------------
# A real model: the real-knowledge set's categories are the concepts
# ----------------------------------------------------------------------------------------------
CATEGORY_PROBES = ("plain", "paraphrase", "in_context")


def answer_token(tokenizer, answer: str) -> str | None:
    """The vocabulary token of " answer" when it is one token (e.g. "ĠParis"), else None (a multi-token answer
    has no single token a value vector could promote)."""
    ids = tokenizer(" " + str(answer).strip(), add_special_tokens=False)["input_ids"]
    return tokenizer.convert_ids_to_tokens(ids)[0] if len(ids) == 1 else None


def _as_fact(row: dict) -> dict:
    """A fact as a training row: prompt and answer (only the answer is trained on) and its sentence (Needle's
    gradient ascent runs on text)."""
    return {"prompt": row["prompt"], "answer": row["answer"], "text": f"{row['prompt']} {row['answer']}."}


class CategorySet:
    """The real-knowledge set's categories (capitals, chemical symbols, languages, ...) shaped like the world's topics,
    so that every topic function of this module runs on a pretrained model.

    data: the session's real-knowledge sets (``S.data`` of ``start(..., data="real")``: forget, retain, unknown,
    known_by_category). The known facts are forget + retain. A category is a concept when the model knows at least
    ``min_known`` of its facts (when fewer than two categories do, as with smoke mode's few questions: the two with
    the most known facts).

    topics: name, words (the category's answers that are one token, spelled as the vocabulary spells them, e.g.
    "ĠParis", over all its questions, known or not) and sentences (its known facts). topic_rows(): up to
    ``per_category`` known facts per concept (a fixed random sample), what knowing the concept is scored on; the
    original answers every one of them. :meth:`forget_retain` and :meth:`probe_rows` are the world's
    :func:`topic_forget_retain` and :func:`probe_rows`.
    """

    name = "real-knowledge categories"

    def __init__(self, data: dict, tokenizer, min_known: int = 15, per_category: int | None = 16, seed: int = 0):
        if not data or "forget" not in data or "retain" not in data:
            raise ValueError("CategorySet needs the real-knowledge sets (S.data of start(..., data='real')).")
        if min_known < 1:
            raise ValueError(f"min_known must be at least 1, got {min_known}.")
        known = [dict(r) for r in data["forget"]] + [dict(r) for r in data["retain"]]
        unknown = [dict(r) for r in data["unknown"]] if data.get("unknown") is not None else []
        by_cat: dict[str, list[dict]] = {}
        for r in known:
            by_cat.setdefault(r["category"], []).append(r)
        counts = pd.Series({c: len(v) for c, v in by_cat.items()}).sort_index()
        chosen = sorted(counts[counts >= min_known].index)
        if len(chosen) < 2:
            chosen = sorted(counts.sort_values(ascending=False, kind="stable").index[:2])
        if len(chosen) < 2:
            raise ValueError(f"The model knows facts of {len(chosen)} category: a concept needs others to compare.")
        self.known = {c: by_cat[c] for c in chosen}
        self.others = [r for c, v in by_cat.items() if c not in chosen for r in v]  # known facts of other categories
        self.topics = []
        for c in chosen:
            answers = [r["answer"] for r in by_cat[c] + [u for u in unknown if u["category"] == c]]
            words = sorted({w for w in (answer_token(tokenizer, a) for a in answers) if w})
            self.topics.append({"name": c, "words": words,
                                "sentences": [_as_fact(r)["text"] for r in by_cat[c]]})
        rng = np.random.default_rng(seed)
        self._rows = []
        for c, rows in self.known.items():
            keep = sorted(rng.choice(len(rows), size=per_category, replace=False)) \
                if per_category is not None and len(rows) > per_category else range(len(rows))
            self._rows += [{"topic": c, "kind": "question", "word": rows[i].get("subject", ""),
                            "prompt": rows[i]["prompt"], "answer": rows[i]["answer"],
                            "paraphrases": list(rows[i].get("paraphrases") or [])} for i in keep]

    def topic_rows(self) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "paraphrases"} for r in self._rows]

    def fact_rows(self) -> list[dict]:
        return []  # no people

    def counts(self) -> pd.DataFrame:
        """Per concept: known facts, scored facts and one-token answer words."""
        scored = pd.Series([r["topic"] for r in self._rows]).value_counts()
        return pd.DataFrame({"known facts": {c: len(v) for c, v in self.known.items()},
                             "scored": scored.to_dict(),
                             "answer words": {t["name"]: len(t["words"]) for t in self.topics}})

    def forget_retain(self, topic: str, n_retain_topics: int | None = 1, n_retain_facts: int = 600, seed: int = 0):
        """Forget = every known fact of ``topic``; retain = the known facts of ``n_retain_topics`` other concepts
        (None: all) and up to ``n_retain_facts`` known facts of the categories that are not concepts (the world's
        people's facts). Rows have prompt, answer and text. Returns ``(forget, retain, retained_topics)``."""
        topic_words(self, topic)
        rng = np.random.default_rng(seed)
        others = [c for c in self.known if c != topic]
        if n_retain_topics is not None:
            if not 0 <= n_retain_topics <= len(others):
                raise ValueError(f"n_retain_topics must be between 0 and {len(others)}, got {n_retain_topics}.")
            others = sorted(rng.choice(others, size=n_retain_topics, replace=False).tolist())
        forget = [_as_fact(r) for r in self.known[topic]]
        retain = [_as_fact(r) for c in others for r in self.known[c]]
        facts = self.others
        picks = sorted(rng.choice(len(facts), size=min(n_retain_facts, len(facts)), replace=False)) if facts else []
        retain += [_as_fact(facts[i]) for i in picks]
        return forget, retain, others

    def probe_rows(self, probe: str = "plain", seed: int = 0) -> list[dict]:
        """plain: the scored facts; paraphrase: one of the question's held-out phrasings (the data's own); in_context:
        two other known facts of the same category first, as sentences (the concept given in context)."""
        if probe not in CATEGORY_PROBES:
            raise KeyError(f"Unknown probe {probe!r} for a real model's categories: choose one of {CATEGORY_PROBES}.")
        rng = np.random.default_rng(seed)
        rows = []
        for r in self._rows:
            prompt = r["prompt"]
            if probe == "paraphrase" and r["paraphrases"]:
                prompt = r["paraphrases"][int(rng.integers(len(r["paraphrases"])))]
            elif probe == "in_context":
                facts = [f for f in self.known[r["topic"]] if f["answer"] != r["answer"]]
                picks = rng.choice(len(facts), size=min(2, len(facts)), replace=False)
                context = " ".join(_as_fact(facts[i])["text"] for i in picks)
                prompt = f"{context} {prompt}" if context else prompt  # a concept of one known fact: no context
            rows.append({**{k: v for k, v in r.items() if k != "paraphrases"}, "prompt": prompt, "probe": probe})
        return rows


def concept_source(data, tokenizer, world: World | None = None, session_data: dict | None = None,
                   min_known: int = 15, per_category: int | None = 16, seed: int = 0, **file_options):
    """What notebook 03 studies: a real model's categories (a :class:`CategorySet`) when ``data`` is ``"real"`` or
    ``"real:..."`` (from ``session_data``, the session's ``S.data``), else
    :func:`unlearn_utils.concept_files.concept_source` (the world's topics or a ConceptVectors file; ``file_options``:
    limit, keep, reference)."""
    if str(data).split(":")[0] == "real":
        if session_data is None or "known_by_category" not in session_data:
            raise ValueError(f"DATA={data!r}: pass session_data=S.data (the session's real-knowledge sets).")
        return CategorySet(session_data, tokenizer, min_known=min_known, per_category=per_category, seed=seed)
    from .concept_files import concept_source as file_or_world

    return file_or_world(data, tokenizer, world, **file_options)


def unmeasured_claims(effects: pd.DataFrame, topic: str, min_ratio: float = 3.0) -> dict:
    """``{"not_measured": {rule_id: reason}}`` for notebook 03's vector claims when ``topic``'s vector did not pass
    causal validation (ratio >= ``min_ratio``, a row of :func:`causal_effects`): the claims are about a concept
    vector, and this is none. ``{}`` when it passed, so ``S.record(**unmeasured_claims(...))`` records nothing."""
    row = effects.set_index("topic").loc[topic]
    if row.ratio >= min_ratio:
        return {}
    from .report import not_measured

    passed = int((effects.ratio >= min_ratio).sum())
    why = (f"the '{topic}' vector did not pass causal validation (noise on it hurt its own answers {row.ratio:.1f}x "
           f"as much as the others', below {min_ratio:g}x; {passed} of {len(effects)} concepts' vectors passed), so "
           "there is no concept vector to test")
    return {"not_measured": not_measured(vector_unchanged=why, needle_matches=why)}
