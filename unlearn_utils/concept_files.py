"""The ConceptVectors file format (Hong et al., arXiv 2406.11614): read a file and shape its concepts like topics.

A ConceptVectors JSON file lists concepts, each with the (layer, dim) of its value vector in a given model, QA
questions, text completions and a Wikipedia article. :func:`load_conceptvectors` reads it into
:class:`ConceptRecord` rows; :class:`ConceptSet` presents them like the world's topics, so that every analysis in
:mod:`unlearn_utils.concepts` runs on a real file as on the world; :func:`concept_source` is notebook 03's ``DATA``
switch between the two. Kept apart from the analysis so that the file format can be read (and tested) on its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .world import World

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
            raise ValueError(f"Row {i} of {path} lacks {missing}; "
                             f"ConceptVectors rows need {list(CONCEPTVECTORS_KEYS)}.")
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
    """The concepts of a ConceptVectors file, shaped like the world's topics so that every topic function of
    :mod:`unlearn_utils.concepts` (:func:`~unlearn_utils.concepts.topic_scores`,
    :func:`~unlearn_utils.concepts.causal_effect`, :func:`~unlearn_utils.concepts.topic_forget_retain`,
    :func:`~unlearn_utils.concepts.probe_scores`) reads either.

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
            raise ValueError("Concept names repeat in the file "
                             f"({sorted(n for n in set(names) if names.count(n) > 1)}); "
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
