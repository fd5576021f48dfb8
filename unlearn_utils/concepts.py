"""Concept vectors (ConceptVectors, Hong et al., arXiv 2406.11614): locate, measure, ablate.

An MLP *value vector* is one column of a layer's down projection: whatever the MLP writes into the residual
stream is a weighted sum of these columns. Projecting a column through the unembedding (the "logit lens" on a
parameter) shows which tokens it promotes. A column whose top tokens are one topic's words is a
**concept vector**.

The paper's questions, on a world where we know every topic's words:
1. Do such vectors exist, and are they causal (noise on one hurts its topic, not others)?
2. Does fine-tuning unlearning change them (cosine, L2, Jaccard of top tokens), or only stop using them?
3. Does ablating the vector itself ("Needle") remove the topic with less collateral damage?
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .arch import get_adapter
from .evaluate import answer_scores
from .training import epoch_batches, set_seed, train_loop
from .world import World


# ----------------------------------------------------------------------------------------------
# Vocabulary projection
# ----------------------------------------------------------------------------------------------
def _check_column(model, layer: int, column: int) -> None:
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
    _check_column(model, layer, column)
    return get_adapter(model).value_vectors(model, int(layer))[:, int(column)].detach().float().clone()


@torch.no_grad()
def project_to_vocab(model, vectors: torch.Tensor, final_norm: bool = False) -> torch.Tensor:
    """Logits that ``vectors`` ([d_model] or [d_model, n]) promote: unembedding @ vector -> [vocab] or [vocab, n].

    final_norm=True first applies the model's final norm to each vector (as the residual stream would see it);
    the paper projects the raw vector (final_norm=False).
    """
    ad = get_adapter(model)
    E = ad.unembedding(model).detach().float()
    v = vectors.detach().float().to(E.device)
    single = v.dim() == 1
    if single:
        v = v[:, None]
    if v.shape[0] != E.shape[1]:
        raise ValueError(f"vectors have size {v.shape[0]} but the model's hidden size is {E.shape[1]}.")
    if final_norm:
        norm = ad.norm(model)
        w = next(norm.parameters())
        v = norm(v.T[:, None, :].to(w.dtype)).float()[:, 0, :].T
    out = E @ v
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


def _word_ids(tokenizer, words) -> list[int]:
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
        ids = _word_ids(tokenizer, words)
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


# ----------------------------------------------------------------------------------------------
# The ConceptVectors JSON format
# ----------------------------------------------------------------------------------------------
CONCEPTVECTORS_KEYS = ("Concept", "Layer", "Dim", "QA", "text_completion", "unrelated_QA", "wikipedia_content")


@dataclass
class ConceptRecord:
    """One ConceptVectors row: a concept, its vector's (layer, dim), questions, completions and article."""

    concept: str
    layer: int
    dim: int
    questions: list[str]
    completions: list[dict]
    unrelated_questions: list[str]
    wikipedia_content: str


def load_conceptvectors(path: str | Path) -> list[ConceptRecord]:
    """Read a ConceptVectors JSON file (a list of rows with Concept, Layer, Dim, QA, text_completion,
    unrelated_QA, wikipedia_content). The key of a row is (Layer, Dim); ``id`` is ignored as the authors advise."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No ConceptVectors file at {path}. Download e.g. llama2-7b_concepts.json from the "
                                "ConceptVectors repository and pass its path.")
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}).") from None
    if isinstance(rows, dict):
        rows = [rows]
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{path} holds no concept rows: expected a JSON list of objects.")
    out = []
    for i, r in enumerate(rows):
        missing = [key for key in CONCEPTVECTORS_KEYS if key not in r]
        if missing:
            raise ValueError(f"Row {i} of {path} lacks {missing}; ConceptVectors rows need {list(CONCEPTVECTORS_KEYS)}.")
        comps = r["text_completion"]
        for c in comps:
            if not {"First_half", "Second_half"} <= set(c):
                raise ValueError(f"Row {i} of {path}: each text_completion needs First_half and Second_half.")
        out.append(ConceptRecord(concept=r["Concept"], layer=int(r["Layer"]), dim=int(r["Dim"]),
                                 questions=list(r["QA"]), completions=list(comps),
                                 unrelated_questions=list(r["unrelated_QA"]),
                                 wikipedia_content=r["wikipedia_content"]))
    return out


def concept_words(record: ConceptRecord, tokenizer, stopwords: set[str] | None = None) -> list[str]:
    """The concept's word set W: tokens of its article minus stopwords (the paper's filter for 'related' tokens)."""
    stop = stopwords if stopwords is not None else _STOPWORDS
    toks = tokenizer.tokenize(record.wikipedia_content)
    clean = {t.lstrip("Ġ▁").strip() for t in toks}
    return sorted(w for w in clean if w and w.lower() not in stop and any(ch.isalpha() for ch in w))


_STOPWORDS = set("""a an the and or but if of at by for with about against between into through during before after
above below to from up down in out on off over under again further then once here there when where why how all any
both each few more most other some such no nor not only own same so than too very s t can will just don should now is
are was were be been being have has had having do does did doing i me my we our you your he him his she her it its
they them their what which who whom this that these those am as until while""".split())


class ConceptSet:
    """The concepts of a ConceptVectors file, shaped like the world's topics so that every topic function here
    (:func:`topic_scores`, :func:`causal_effect`, :func:`topic_forget_retain`, :func:`probe_scores`) reads either.

    topics: name, words (the article's tokens minus stopwords) and sentences (the article); vectors: the file's
    (layer, dim) per concept. topic_rows(): what "knowing the concept" is scored on:

    * with ``reference`` (the original model, as the paper does: it compares the unlearned model's answers with the
      original's), every text completion (First_half) and every QA question, each answered by the reference's own
      greedy continuation (``answer_tokens`` tokens), so the question is "does the model still say what it said?";
    * without it, the completions only, answered by the first ``answer_words`` words of Second_half (the file's
      QA questions carry no answers).
    """

    def __init__(self, records: list[ConceptRecord], tokenizer, answer_words: int = 3, reference=None,
                 answer_tokens: int = 4, batch_size: int = 32):
        if not records:
            raise ValueError("The ConceptVectors file holds no concepts.")
        names = [r.concept for r in records]
        if len(set(names)) != len(names):
            raise ValueError(f"Concept names repeat in the file ({sorted(n for n in set(names) if names.count(n) > 1)}); "
                             "each concept needs one row.")
        self.records = records
        self.vectors = {r.concept: (r.layer, r.dim) for r in records}
        self.topics = [{"name": r.concept, "words": concept_words(r, tokenizer),
                        "sentences": _sentences(r.wikipedia_content)} for r in records]
        self.answer_words = answer_words
        self.name = "ConceptVectors file"
        self._rows = self._reference_rows(reference, tokenizer, answer_tokens, batch_size) if reference is not None \
            else self._file_rows()

    def _file_rows(self) -> list[dict]:
        rows = []
        for r in self.records:
            for c in r.completions:
                answer = " ".join(str(c["Second_half"]).split()[: self.answer_words])
                if answer:
                    rows.append({"topic": r.concept, "kind": "completion", "word": "",
                                 "prompt": str(c["First_half"]).strip(), "answer": answer})
        return rows

    def _reference_rows(self, model, tokenizer, answer_tokens: int, batch_size: int) -> list[dict]:
        from .patching import teacher_forced_inputs

        asks = [(r.concept, "completion", str(c["First_half"]).strip()) for r in self.records for c in r.completions]
        asks += [(r.concept, "question", QA_PROMPT.format(question=str(q).strip())) for r in self.records
                 for q in r.questions]
        asks = [a for a in asks if a[2]]
        rows = []
        for i in range(0, len(asks), batch_size):
            chunk = asks[i: i + batch_size]
            tf = teacher_forced_inputs(model, tokenizer, [p for _, _, p in chunk], max_new_tokens=answer_tokens)
            for (topic, kind, prompt), answer in zip(chunk, tf.answers):
                if answer.strip():  # the reference stopped at once: nothing to compare with
                    rows.append({"topic": topic, "kind": kind, "word": "", "prompt": prompt, "answer": answer.strip()})
        return rows

    def topic_rows(self) -> list[dict]:
        return list(self._rows)

    def fact_rows(self) -> list[dict]:
        return []  # a ConceptVectors file has no people

    def probe_rows(self, probe: str = "plain", seed: int = 0) -> list[dict]:
        """plain: the scored rows as they are (see :meth:`topic_rows`); in_context: two sentences of the concept's
        article first."""
        if probe not in FILE_PROBES:
            raise KeyError(f"Unknown probe {probe!r} for a ConceptVectors file: choose one of {FILE_PROBES} "
                           "(paraphrase and role-play need the world's templates).")
        rng = np.random.default_rng(seed)
        article = {t["name"]: t["sentences"] for t in self.topics}
        rows = []
        for r in self.topic_rows():
            prompt = r["prompt"]
            if probe == "in_context":  # sentences that contain the answer would give it away: left out
                sents = [x for x in article[r["topic"]] if r["answer"].lower() not in x.lower()]
                picks = rng.choice(len(sents), size=min(2, len(sents)), replace=False) if sents else []
                prompt = " ".join(sents[i] for i in picks) + " " + prompt
            rows.append({**r, "prompt": prompt.strip(), "probe": probe})
        return rows


FILE_PROBES = ("plain", "in_context")
QA_PROMPT = "Question: {question}\nAnswer:"


def _sentences(text: str) -> list[str]:
    import re

    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def concept_source(data, tokenizer, world: World | None = None, limit: int | None = None,
                   keep: list[str] | None = None, reference=None):
    """What notebook 03 studies: ``"world"`` (the world's topics) or ``"conceptvectors:FILE"`` (a :class:`ConceptSet`).

    limit / keep (files only; a real file has hundreds of concepts, each validated with several forward passes
    over every concept's completions): the first ``limit`` concepts of the file, plus those named in ``keep``.
    reference (files only): the original model, whose own answers the concept's questions are scored against
    (see :class:`ConceptSet`).
    Other data kinds (TOFU, question files, WMDP) hold no concepts: a clear error says so.
    """
    if data is None or data == "world":
        if world is None:
            raise ValueError("data='world' needs the world (pass world=S.world).")
        return world
    kind, sep, where = str(data).partition(":")
    if kind != "conceptvectors" or not where:
        raise ValueError(f"DATA={data!r}: notebook 03 studies concepts, so it takes 'world' or "
                         "'conceptvectors:FILE.json' (a ConceptVectors file); question files belong to notebooks "
                         "00-02 and 04-06.")
    records = load_conceptvectors(where)
    wanted = [k for k in (keep or []) if k]
    unknown = sorted(set(wanted) - {r.concept for r in records})
    if unknown:
        raise KeyError(f"Concept(s) {unknown} are not in {where}; it has e.g. {[r.concept for r in records[:5]]}.")
    if limit is not None:
        chosen = {r.concept for r in records[:limit]} | set(wanted)
        records = [r for r in records if r.concept in chosen]
    return ConceptSet(records, tokenizer, reference=reference)


@torch.no_grad()
def given_vectors(model, tokenizer, concepts: ConceptSet, k: int = 20, final_norm: bool = False) -> pd.DataFrame:
    """The file's vector per concept, scored like :func:`locate_concept_vectors`'s rows: hits and overlap of its
    top-``k`` tokens with the concept's words, and the tokens (a check that the file matches this model)."""
    rows = []
    vocab = get_adapter(model).unembedding(model).shape[0]
    _check_k(k, vocab)
    for t in concepts.topics:
        layer, column = concepts.vectors[t["name"]]
        _check_column(model, layer, column)
        top_ids = project_to_vocab(model, value_vector(model, layer, column), final_norm).topk(k).indices.tolist()
        ids = set(_word_ids(tokenizer, t["words"]))
        tokens = tokenizer.convert_ids_to_tokens(top_ids)
        hits = len(ids & set(top_ids))
        rows.append({"topic": t["name"], "layer": layer, "column": column, "hits": hits,
                     "overlap": hits / max(1, min(k, len(ids))), "tokens": tokens})
    return pd.DataFrame(rows)


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


def _column(model, layer: int, column: int):
    """(down-projection weight, index of value vector ``column`` in it) after checking the range."""
    _check_column(model, layer, column)
    ad = get_adapter(model)
    w = ad.down_proj(model, int(layer)).weight
    return w, ((slice(None), int(column)) if not ad.conv1d else (int(column), slice(None)))


@torch.no_grad()
def _add_noise(w: torch.Tensor, idx, scale: float, generator: torch.Generator, relative: bool) -> None:
    """Add Gaussian noise to ``w[idx]``: norm ``scale`` x the vector's norm (relative) or std ``scale`` per coordinate."""
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
    w, idx = _column(model, layer, column)
    saved = w.data[idx].clone()
    _add_noise(w, idx, scale, torch.Generator().manual_seed(seed), relative)
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
            "target_acc_clean": float(clean.loc[topic, "accuracy"]), "target_acc_noisy": float(noisy.loc[topic, "accuracy"]),
            "unrelated_acc_clean": float(clean.loc[other, "accuracy"].mean()),
            "unrelated_acc_noisy": float(noisy.loc[other, "accuracy"].mean()),
            "target_logprob_drop": drop_t, "unrelated_logprob_drop": drop_u,
            "ratio": drop_t / max(drop_u, 1e-6)}


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
    _check_column(original, layer, column)
    _check_column(unlearned, layer, column)
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


# ----------------------------------------------------------------------------------------------
# Needle: ablate the vector itself
# ----------------------------------------------------------------------------------------------
def _as_vectors(vectors) -> list[tuple[int, int]]:
    if isinstance(vectors, tuple) and len(vectors) == 2 and not isinstance(vectors[0], (tuple, list)):
        vectors = [vectors]
    out = [(int(l), int(c)) for l, c in vectors]
    if not out:
        raise ValueError("No vectors given: pass (layer, column) or a list of them.")
    return out


def needle(model, tokenizer, vectors, scale: float = 10.0, forget_texts: list[str] | None = None,
           steps: int = 0, lr: float = 0.05, seed: int = 0, relative: bool = True, inplace: bool = False,
           progress: bool = True):
    """Ablate concept vectors ("Needle"): add Gaussian noise to each, then optionally run gradient ascent on
    ``forget_texts`` in which **only those columns** change. ``vectors`` is (layer, column) or a list of them.
    Returns ``(model, log)``; the input model is copied unless ``inplace=True``.
    """
    import copy

    from .unlearning.losses import ga_loss
    from .unlearning.methods import encode_examples

    vectors = _as_vectors(vectors)
    for layer, column in vectors:
        _check_column(model, layer, column)
    if steps < 0:
        raise ValueError(f"steps must be zero or positive, got {steps}.")
    if steps and not forget_texts:
        raise ValueError("Needle training needs forget_texts (the topic's text) when steps > 0.")
    set_seed(seed)
    model = model if inplace else copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    weights: dict[int, torch.Tensor] = {}
    masks: dict[int, torch.Tensor] = {}
    for layer, column in vectors:
        w, idx = _column(model, layer, column)
        _add_noise(w, idx, scale, g, relative)
        weights[layer] = w
        masks.setdefault(layer, torch.zeros_like(w))[idx] = 1.0
    log = pd.DataFrame()
    if steps:
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        hooks = []
        for layer, w in weights.items():
            w.requires_grad_(True)
            hooks.append(w.register_hook(lambda grad, m=masks[layer]: grad * m))
        seqs, label_masks = encode_examples(tokenizer, [{"text": t} for t in forget_texts])
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        get = epoch_batches(seqs, min(16, len(seqs)), pad, seed, label_masks)
        dev = next(iter(weights.values())).device

        def ga(m, b):
            return ga_loss(m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"])

        try:
            log = pd.DataFrame(train_loop(model, lambda step: {k: v.to(dev) for k, v in get(step).items()}, steps, lr,
                                          loss_fn=ga, schedule="constant", params=list(weights.values()), clip=0.0,
                                          desc="Needle", progress=progress))
        finally:
            for h in hooks:
                h.remove()
            for n, p in model.named_parameters():
                p.requires_grad_(flags[n])
    model.eval()
    return model, log


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
    source has: plain, paraphrase, in_context, role_play on the world; plain, in_context for a ConceptSet)."""
    topic_words(world, topic)
    if probes is None:
        probes = FILE_PROBES if isinstance(world, ConceptSet) else ("plain", "paraphrase", "in_context", "role_play")
    out = []
    for probe in probes:
        df = pd.DataFrame(probe_rows(world, probe, seed))
        df["correct"] = answer_scores(model, tokenizer, list(df["prompt"]), list(df["answer"]))["correct"].to_numpy()
        out.append({"probe": probe, "target": float(df.loc[df.topic == topic, "correct"].mean()),
                    "unrelated": float(df.loc[df.topic != topic, "correct"].mean())})
    return pd.DataFrame(out).set_index("probe")
