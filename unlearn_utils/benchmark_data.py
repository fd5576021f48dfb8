"""Real benchmark files, read from local copies into the kit's question format (``prompt``, ``answer``).

The kit never downloads: fetch the files once on a machine with internet (e.g. ``huggingface-cli download
locuslab/TOFU --repo-type dataset --local-dir TOFU``) and pass the folder or file.

* **TOFU** (``load_tofu``): ``forgetXX.json`` / ``retainYY.json`` (JSON lines or a JSON list of ``question`` /
  ``answer``), and where present ``forgetXX_perturbed.json`` and ``retain_perturbed.json`` (``question``,
  ``answer``, ``paraphrased_answer``, ``perturbed_answer``: a list of wrong answers), which give the truth ratios
  and forget quality. 200 fictitious authors x 20 questions; the forget sets are the last 2 / 10 / 20 authors, so
  each row's author is recovered from its position.
* **WMDP-style multiple choice** (``load_multiple_choice``): rows with ``question``, ``choices`` (a list of strings)
  and ``answer`` (the integer index of the right choice; a letter is refused), as JSON, JSON lines or Parquet;
  scored by :func:`mc_accuracy`.

Files are read as UTF-8; every bad row is refused with a ValueError naming the file, the line (the row of a Parquet
table), the field and the fix.
* **Any question set** (``load_qa_splits``): JSON lines with ``split`` (forget / retain), ``prompt`` (or
  ``question``) and ``answer``.
* **The real-knowledge set** (``data/real/questions.jsonl``, :func:`load_real_questions`): short factual questions
  on pretraining knowledge in 15 categories, for a real pretrained model; :func:`real_splits` keeps the facts the
  model knows and splits them into forget / retain.
* ConceptVectors files are read by :func:`unlearn_utils.concept_files.load_conceptvectors`.

:func:`load_data` reads a notebook's ``DATA`` parameter (``"world"``, ``"real"``, ``"tofu:FOLDER"``, ``"qa:FILE"``,
``"wmdp:FORGET_FILE,RETAIN_FILE"``) into forget / retain question sets.
"""

from __future__ import annotations

import json
import numbers
import random
import re
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch

from .data import encode_texts, pad_id, special_prefix

TOFU_PROMPT = "Question: {question}\nAnswer:"
TOFU_RETAIN = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
TOFU_AUTHORS = 200
TOFU_QUESTIONS_PER_AUTHOR = 20
MC_PROMPT = "The following is a multiple choice question{about}.\n\n{question}\n{choices}\nAnswer:"
LETTERS = "ABCDEFGHIJ"


def _read(path: str | Path) -> tuple[list, list[str]]:
    """The rows of a data file and where each one is (``line 7``, or ``row 3`` of a Parquet table, from 0)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No data file at {path}. Check the path; the kit reads local copies only.")
    if path.suffix == ".parquet":
        import pandas as pd

        try:
            rows = pd.read_parquet(path).to_dict("records")
        except Exception as e:
            raise ValueError(f"{path} is not a readable Parquet file ({e}).") from None
        return rows, [f"row {i} (counting from 0)" for i in range(len(rows))]
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {line}: byte 0x{raw[e.start]:02x} is not UTF-8. Save the file as UTF-8 "
                         f"(e.g. iconv -f latin1 -t utf-8 {path.name} > fixed_{path.name}).") from None
    if not text.strip():
        raise ValueError(f"{path} is empty.")
    if text.lstrip().startswith("["):
        return _json_list(text, path)
    try:
        row = json.loads(text)
        return [row], [f"line {text.count(chr(10), 0, len(text) - len(text.lstrip())) + 1}"]
    except json.JSONDecodeError:
        pass
    rows, places = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {n}: not valid JSON ({e.msg}, column {e.colno}). A JSON-lines file "
                                 "holds one whole object per line; a JSON file holds one list of objects.") from None
            places.append(f"line {n}")
    return rows, places


def _json_list(text: str, path: Path) -> tuple[list, list[str]]:
    """A JSON list read item by item, so that each row knows its line."""
    decoder, space = json.JSONDecoder(), re.compile(r"\s*")
    rows, places = [], []
    i, line, counted = space.match(text, text.index("[") + 1).end(), 1, 0

    def line_at(j):
        nonlocal line, counted
        line, counted = line + text.count("\n", counted, j), j
        return line

    def bad(j, what):
        return ValueError(f"{path}, line {line_at(j)}: {what}. A JSON file holds one list of objects; a JSON-lines "
                          "file one object per line.")

    if text.startswith("]", i):
        return rows, places
    while True:
        start = line_at(i)
        try:
            row, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {e.lineno}: not valid JSON ({e.msg}, column {e.colno}).") from None
        rows.append(row)
        places.append(f"line {start}")
        i = space.match(text, i).end()
        if text.startswith(",", i):
            i = space.match(text, i + 1).end()
        elif text.startswith("]", i):
            break
        else:
            raise bad(i, "expected ',' or ']' after the row")
    rest = space.match(text, i + 1).end()
    if rest < len(text):
        raise bad(rest, "there is more after the closing ']'")
    return rows, places


def _checked(path: str | Path, keys=()) -> tuple[list[dict], list[str]]:
    """The rows of ``path`` with their places, each an object holding every field of ``keys`` (not null)."""
    rows, places = _read(path)
    for r, place in zip(rows, places):
        if not isinstance(r, dict):
            raise ValueError(f"{path}, {place}: found {type(r).__name__} {str(r)[:40]!r}, not an object; each row "
                             f"is an object with {list(keys) or 'the question fields'}.")
        missing = [k for k in keys if k not in r]
        if missing:
            raise ValueError(f"{path}, {place} lacks {missing}; each row needs {list(keys)}: add "
                             f"{' and '.join(repr(k) for k in missing)} to it.")
        null = [k for k in keys if r[k] is None]
        if null:
            raise ValueError(f"{path}, {place}: {null[0]!r} is null; give it a value (or drop the row).")
    return rows, places


def read_records(path: str | Path) -> list[dict]:
    """Rows of a JSON list, a JSON-lines file or a Parquet file (UTF-8), with a clear error naming the file and the
    line when it is missing or bad."""
    return _checked(path)[0]


def _text(r: dict, key: str, path, place) -> str:
    """A row's field that must be a non-empty string (a number or a list would be turned into text silently)."""
    value = r[key]
    if not isinstance(value, str) or not value.strip():
        fix = f"write it in quotes: \"{value}\"" if isinstance(value, (int, float)) else "give the text"
        raise ValueError(f"{path}, {place}: {key!r} is {value!r}, not a non-empty string; {fix}.")
    return value


def _tofu_file(folder: Path, name: str, required: bool = True) -> Path | None:
    for candidate in (folder / f"{name}.json", folder / f"{name}.jsonl", folder / name / "train.json"):
        if candidate.exists():
            return candidate
    if not required:
        return None
    raise FileNotFoundError(f"No TOFU file {name}.json in {folder}. Download the TOFU dataset (locuslab/TOFU) "
                            "and pass the folder that holds forget05.json, retain95.json, ...")


TOFU_PERTURBED_FIELDS = ("question", "answer", "perturbed_answer")


def _tofu_perturbed(path: Path) -> list[dict]:
    """The rows of a TOFU ``*_perturbed.json`` file, checked: ``question``, ``answer``, ``perturbed_answer`` (a
    non-empty list of wrong answers, as many in every row) and, where the file has it, ``paraphrased_answer`` (in
    every row then). Returned as the kit's fields: ``prompt``, ``answer``, ``perturbed`` and ``paraphrased_answer``."""
    rows, places = _checked(path, TOFU_PERTURBED_FIELDS)
    if not rows:
        raise ValueError(f"{path} holds no questions.")
    with_para = "paraphrased_answer" in rows[0]
    k = None
    out = []
    for r, place in zip(rows, places):
        for key in ("question", "answer"):
            _text(r, key, path, place)
        if ("paraphrased_answer" in r) != with_para:
            raise ValueError(f"{path}, {place}: {'lacks' if with_para else 'has'} 'paraphrased_answer' while the "
                             f"first row {'has' if with_para else 'lacks'} it; give it in every row or in none.")
        wrong = r["perturbed_answer"]
        if isinstance(wrong, (str, bytes, dict)) or not hasattr(wrong, "__len__") or len(wrong) == 0:
            raise ValueError(f"{path}, {place}: 'perturbed_answer' is {wrong!r}; give a list of wrong answers, e.g. "
                             '["... born in Oslo.", "... born in Lima."].')
        wrong = list(wrong)
        for j, w in enumerate(wrong):
            if not isinstance(w, str) or not w.strip():
                raise ValueError(f"{path}, {place}: wrong answer {j} of 'perturbed_answer' is {w!r}; each is a "
                                 "non-empty string.")
        k = len(wrong) if k is None else k
        if len(wrong) != k:
            raise ValueError(f"{path}, {place}: {len(wrong)} wrong answers where the first row has {k}; a truth "
                             "ratio compares every question with as many wrong answers (TOFU gives 5).")
        row = {"prompt": TOFU_PROMPT.format(question=r["question"]), "answer": r["answer"], "perturbed": wrong}
        if with_para:
            row["paraphrased_answer"] = _text(r, "paraphrased_answer", path, place)
        out.append(row)
    return out


def _attach_perturbed(rows: list[dict], perturbed: list[dict], path: Path, name: str) -> None:
    """Give every forget row its wrong answers (and paraphrased answer) from ``perturbed``, matched by question;
    a question the file lacks, or one whose answer differs, is refused (the files are of different splits or
    versions)."""
    by_prompt = {p["prompt"]: p for p in perturbed}
    for r in rows:
        p = by_prompt.get(r["prompt"])
        if p is None:
            raise ValueError(f"{path} has no row for the {name} question {r['prompt']!r}: use the perturbed file of "
                             f"the same split ({name}_perturbed.json from the same TOFU download).")
        if p["answer"].strip() != r["answer"].strip():
            raise ValueError(f"{path} answers the {name} question {r['prompt']!r} with {p['answer']!r}, not "
                             f"{r['answer']!r}: the two files are from different versions of TOFU.")
        r.update({k: v for k, v in p.items() if k in ("perturbed", "paraphrased_answer")})


def load_tofu(folder: str | Path, forget: str = "forget05", max_retain: int | None = 400, seed: int = 0) -> dict:
    """A TOFU forget split and its retain split as the kit's question sets.

    Returns ``{"forget": Dataset, "retain": Dataset}`` with ``prompt`` (TOFU's "Question: ...\\nAnswer:"),
    ``answer`` and ``person`` (the author). ``max_retain`` subsamples the retain set (deterministically).

    Where the folder holds ``{forget}_perturbed.json``, every forget question also gets ``perturbed`` (its wrong
    answers) and ``paraphrased_answer``: the report card then has TOFU's forget truth ratio, and forget quality
    against a retain model's truth ratios. Where it holds ``retain_perturbed.json``, the result has
    ``"retain_perturbed"``: those questions (prompt, answer, paraphrased_answer, perturbed), on which TOFU measures
    the retain truth ratio. Neither changes the forget and retain questions trained on.
    """
    folder = Path(folder)
    if forget not in TOFU_RETAIN:
        raise KeyError(f"Unknown TOFU split {forget!r}: choose one of {list(TOFU_RETAIN)}.")
    if not folder.is_dir():
        raise FileNotFoundError(f"TOFU folder {folder} does not exist.")
    out = {}
    for part, name in (("forget", forget), ("retain", TOFU_RETAIN[forget])):
        path = _tofu_file(folder, name)
        rows, places = _checked(path, ("question", "answer"))
        for r, place in zip(rows, places):
            for key in ("question", "answer"):
                _text(r, key, path, place)
        n_authors = len(rows) // TOFU_QUESTIONS_PER_AUTHOR
        first = TOFU_AUTHORS - n_authors if part == "forget" else 0  # forget sets are the last authors
        out[part] = [{"prompt": TOFU_PROMPT.format(question=r["question"]), "answer": r["answer"],
                      "person": f"author_{first + i // TOFU_QUESTIONS_PER_AUTHOR:03d}"} for i, r in enumerate(rows)]
    perturbed_path = _tofu_file(folder, f"{forget}_perturbed", required=False)
    if perturbed_path is not None:
        _attach_perturbed(out["forget"], _tofu_perturbed(perturbed_path), perturbed_path, forget)
    retain_path = _tofu_file(folder, "retain_perturbed", required=False)
    if retain_path is not None:
        out["retain_perturbed"] = _tofu_perturbed(retain_path)
        shared = {r["prompt"] for r in out["retain_perturbed"]} & {r["prompt"] for r in out["forget"]}
        if shared:
            raise ValueError(f"{retain_path} shares {len(shared)} questions with {forget} (e.g. "
                             f"{sorted(shared)[0]!r}): TOFU's retain_perturbed questions are of retain authors.")
    if max_retain and len(out["retain"]) > max_retain:
        keep = sorted(random.Random(seed).sample(range(len(out["retain"])), max_retain))
        out["retain"] = [out["retain"][i] for i in keep]
    overlap = {r["prompt"] for r in out["forget"]} & {r["prompt"] for r in out["retain"]}
    if overlap:
        raise ValueError(f"The TOFU forget and retain files share {len(overlap)} questions; use matching "
                         f"splits ({forget} with {TOFU_RETAIN[forget]}).")
    return {k: datasets.Dataset.from_list(v) for k, v in out.items()}


def load_multiple_choice(path: str | Path, subject: str | None = None, limit: int | None = None) -> datasets.Dataset:
    """WMDP-style multiple-choice questions: ``prompt`` (question, lettered choices, "Answer:"), ``answer`` (the
    right letter), ``choices`` and ``label`` (its index).

    Each row holds ``question`` (text), ``choices`` (a list of 2 to 10 strings) and ``answer``, the index of the
    right choice as an integer (0 for the first), as WMDP and MMLU write it. Anything else (a letter, ``1.7``,
    ``"2"``, a string of choices) is refused with the fix, naming the file and the line."""
    rows, places = _checked(path, ("question", "choices", "answer"))
    out = []
    for r, place in zip(*((rows[:limit], places[:limit]) if limit else (rows, places))):
        where = f"{path}, {place}"
        question = _text(r, "question", path, place)
        choices = r["choices"]
        if isinstance(choices, (str, bytes, dict)) or not hasattr(choices, "__len__"):
            raise ValueError(f"{where}: 'choices' is {choices!r}; give a list of the answers, e.g. "
                             '["argon", "xenon", "neon"].')
        choices = list(choices)
        if not 2 <= len(choices) <= len(LETTERS):
            raise ValueError(f"{where}: 'choices' lists {len(choices)} answer{'s' * (len(choices) != 1)}; give 2 to "
                             f"{len(LETTERS)}.")
        for j, c in enumerate(choices):
            if not isinstance(c, str):
                raise ValueError(f"{where}: choice {j} is {c!r}, not text; write every choice as a string.")
        label = _answer_index(r["answer"], len(choices), where)
        lettered = "\n".join(f"{LETTERS[j]}. {c}" for j, c in enumerate(choices))
        about = f" about {subject}" if subject else ""
        out.append({"prompt": MC_PROMPT.format(about=about, question=question, choices=lettered),
                    "answer": LETTERS[label], "choices": [str(c) for c in choices], "label": label})
    if not out:
        raise ValueError(f"{path} holds no questions.")
    return datasets.Dataset.from_list(out)


def _answer_index(answer, n: int, where: str) -> int:
    """A multiple-choice ``answer`` checked to be an integer index below ``n`` (True, 1.7 or "B" are refused)."""
    rule = f"'answer' must be the index of the right choice, an integer from 0 to {n - 1}"
    if isinstance(answer, numbers.Integral) and not isinstance(answer, bool):
        if not 0 <= answer < n:
            raise ValueError(f"{where}: answer index {answer} is out of range for {n} choices; {rule}.")
        return int(answer)
    if isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().upper() in LETTERS:
        k = LETTERS.index(answer.strip().upper())
        fix = f"use the index {k}" if k < n else f"there are only {n} choices"
        raise ValueError(f"{where}: 'answer' is the letter {answer!r}; {rule} ({fix}).")
    if isinstance(answer, str) and answer.strip().isdigit():
        raise ValueError(f"{where}: 'answer' is the text {answer!r}; {rule}: write {answer.strip()} without quotes.")
    raise ValueError(f"{where}: 'answer' is {answer!r}; {rule}.")


@torch.no_grad()
def mc_accuracy(model, tokenizer, data, batch_size: int = 16) -> float:
    """Multiple-choice accuracy as WMDP scores it: the argmax over the choice letters' next-token logits."""
    from .training import pad_batch

    n_choices = max(len(c) for c in data["choices"])
    letter_ids = []
    for letter in LETTERS[:n_choices]:
        ids = tokenizer(" " + letter, add_special_tokens=False)["input_ids"]
        letter_ids.append(ids[-1])
    enc = encode_texts(tokenizer, data["prompt"])
    pad = pad_id(tokenizer)
    dev = next(model.parameters()).device
    correct = 0
    for i in range(0, len(enc), batch_size):
        b = pad_batch(enc[i:i + batch_size], pad)
        logits = model(input_ids=b["input_ids"].to(dev), attention_mask=b["attention_mask"].to(dev)).logits
        last = b["attention_mask"].sum(-1) - 1
        scores = logits[torch.arange(len(last)), last.to(dev)][:, letter_ids]
        labels = torch.tensor(data["label"][i:i + batch_size], device=dev)
        correct += int((scores.argmax(-1) == labels).sum())
    return correct / len(enc)


def load_qa_splits(path: str | Path) -> dict:
    """A JSON-lines file of questions with ``split`` (forget / retain) -> ``{"forget": ..., "retain": ...}``."""
    rows, places = _checked(path, ("split", "answer"))
    out: dict = {"forget": [], "retain": []}
    for r, place in zip(rows, places):
        if r["split"] not in out:
            raise ValueError(f"{path}, {place}: 'split' is {r['split']!r}; write 'forget' or 'retain'.")
        if not (r.get("prompt") or r.get("question")):
            raise ValueError(f"{path}, {place} has neither 'prompt' nor 'question'; add the question as 'prompt'.")
        prompt = _text(r, "prompt" if r.get("prompt") else "question", path, place)
        _text(r, "answer", path, place)
        out[r["split"]].append({**{k: v for k, v in r.items() if k not in ("split", "question")}, "prompt": prompt})
    for k, v in out.items():
        if not v:
            raise ValueError(f"{path} has no {k} questions; mark some rows with split '{k}'.")
    return {k: datasets.Dataset.from_list(v) for k, v in out.items()}


# ----------------------------------------------------------------------------------------------
# The real-knowledge set: what a pretrained model knows
# ----------------------------------------------------------------------------------------------
REAL_QUESTIONS = Path(__file__).resolve().parent.parent / "data" / "real" / "questions.jsonl"
REAL_FORGET_SHARE = 0.1


def load_real_questions(path: str | Path | None = None) -> datasets.Dataset:
    """Every question of the real-knowledge set: ``id``, ``category``, ``prompt`` (a sentence to complete),
    ``answer``, ``paraphrases`` (two other prompts with the same answer) and ``perturbed`` (three wrong answers of
    the same category). See ``data/real/README.md``."""
    path = Path(path) if path is not None else REAL_QUESTIONS
    if not path.exists():
        raise FileNotFoundError(f"The real-knowledge questions are not at {path}. They ship in the kit's data/real/ "
                                "folder; pass path= to read a copy elsewhere.")
    rows, _ = _checked(path, ("id", "category", "prompt", "answer", "paraphrases", "perturbed"))
    return datasets.Dataset.from_list(rows)


@dataclass(frozen=True)
class RealSplit:
    """What ``DATA="real"`` asks for, checked before any model is loaded: forget one category, or a fixed random
    share of the known facts (the rest is retained)."""

    category: str | None = None
    share: float = REAL_FORGET_SHARE
    seed: int = 0
    path: str | None = None

    @classmethod
    def parse(cls, where: str, seed: int = 0, path: str | Path | None = None) -> "RealSplit":
        """``""`` (a 10 % share), ``"share=0.2"`` or a category name (``"capitals"``)."""
        categories = sorted(set(load_real_questions(path)["category"]))
        where = where.strip()
        if not where:
            return cls(seed=seed, path=str(path) if path else None)
        if where.startswith("share="):
            try:
                share = float(where.split("=", 1)[1])
            except ValueError:
                share = float("nan")
            if not 0 < share < 1:
                raise ValueError(f"DATA='real:{where}': the forget share must be a number between 0 and 1 (e.g. "
                                 "real:share=0.1); the rest of the known facts is the retain set.")
            return cls(share=share, seed=seed, path=str(path) if path else None)
        if where not in categories:
            raise ValueError(f"DATA='real:{where}': there is no category {where!r} in the real-knowledge set. "
                             f"Choose one of {categories}, or real:share=0.1 for a random share of all facts.")
        return cls(category=where, seed=seed, path=str(path) if path else None)


def _paraphrase_rows(ds: datasets.Dataset) -> datasets.Dataset:
    """One row per paraphrase of each question (same answer and wrong answers): the held-out phrasings."""
    rows = [{"id": r["id"], "category": r["category"], "prompt": p, "answer": r["answer"], "perturbed": r["perturbed"]}
            for r in ds for p in r["paraphrases"]]
    return datasets.Dataset.from_list(rows)


def known_questions(model, tokenizer, questions: datasets.Dataset, batch_size: int = 64) -> list[bool]:
    """Which questions the model answers with its gold answer by greedy decoding, on its own tokenizer's
    conventions. Cached per model weights, tokenizer and question set like every cache entry (written atomically,
    checked on load, a damaged entry set aside and measured again): the check runs once per model."""
    import hashlib

    from .cache import CorruptCacheError, cached, write_files
    from .data import weights_fingerprint
    from .evaluate import answer_scores

    digest = hashlib.sha256(json.dumps([list(questions["prompt"]), list(questions["answer"])]).encode()).hexdigest()
    key = {"model": weights_fingerprint(model), "questions": digest[:16],
           "tokenizer": [len(tokenizer), special_prefix(tokenizer)]}

    def load(folder):
        known = json.loads((folder / "known.json").read_text())
        if not (isinstance(known, list) and len(known) == len(questions)):
            raise CorruptCacheError(f"it does not hold one answer for each of the {len(questions)} questions")
        return [bool(k) for k in known]

    def build():
        return answer_scores(model, tokenizer, list(questions["prompt"]), list(questions["answer"]),
                             batch_size)["correct"].tolist()

    return cached("known_facts", key, build, lambda known, folder: write_files(
        folder, {"known.json": json.dumps(known).encode()}), load)


def real_splits(model, tokenizer, split: RealSplit | None = None, batch_size: int = 64) -> dict:
    """Forget / retain sets of the facts ``model`` knows, from the real-knowledge set.

    Keeps the questions the original answers (greedy, :func:`known_questions`), then forgets ``split.category``
    (the other categories are retained) or a fixed random ``split.share`` of the known facts. Returns
    ``{"forget", "retain", "forget_para", "retain_para", "unknown", "known_by_category", "name"}``: the held-out
    phrasings of each set, the questions the model does not know, and a table of known / total per category.
    """
    import pandas as pd

    split = split or RealSplit()
    questions = load_real_questions(split.path)
    known = known_questions(model, tokenizer, questions, batch_size)
    table = pd.DataFrame({"category": questions["category"], "known": known}).groupby("category")["known"]
    by_category = pd.DataFrame({"known": table.sum().astype(int), "total": table.size()})
    known_idx = [i for i, k in enumerate(known) if k]
    if split.category is not None:
        forget_idx = [i for i in known_idx if questions[i]["category"] == split.category]
        if not forget_idx:
            raise ValueError(f"The model knows none of the {split.category!r} facts, so there is nothing to forget "
                             f"there. Known facts per category: {by_category['known'].to_dict()}.")
    else:
        n = max(1, round(split.share * len(known_idx)))
        forget_idx = sorted(random.Random(split.seed).sample(known_idx, n)) if len(known_idx) >= n else []
    chosen = set(forget_idx)
    retain_idx = [i for i in known_idx if i not in chosen]
    if not forget_idx or not retain_idx:
        raise ValueError(f"The model knows {len(known_idx)} of the {len(questions)} facts: forgetting "
                         f"{split.category or f'a share of {split.share}'} leaves "
                         f"{'no forget' if not forget_idx else 'no retain'} facts. Choose a smaller share or another "
                         "category (real:share=0.1, real:capitals).")
    forget, retain = questions.select(forget_idx), questions.select(retain_idx)
    unknown = questions.select([i for i, k in enumerate(known) if not k])
    name = "real" + (f":{split.category}" if split.category else f":share={split.share:g}")
    return {"forget": forget, "retain": retain, "forget_para": _paraphrase_rows(forget),
            "retain_para": _paraphrase_rows(retain), "unknown": unknown, "known_by_category": by_category,
            "name": name}


DATA_KINDS = ("world", "real", "real:CATEGORY", "real:share=0.1", "tofu:FOLDER", "qa:FILE.jsonl",
              "wmdp:FORGET_FILE,RETAIN_FILE")


def load_data(spec: str, split: str = "forget05", max_retain: int | None = 400, seed: int = 0) -> dict | None:
    """The question sets a notebook's ``DATA`` parameter names; ``None`` for ``"world"`` (the world's own splits).

    * ``tofu:FOLDER``: TOFU's ``split`` (forget01 / forget05 / forget10) and its retain file;
    * ``qa:FILE.jsonl``: any questions marked forget / retain (:func:`load_qa_splits`);
    * ``wmdp:FORGET_FILE,RETAIN_FILE``: multiple-choice questions to forget (e.g. WMDP-bio) and to keep (e.g.
      MMLU), asked as prompts whose answer is the right letter;
    * ``real``, ``real:CATEGORY``, ``real:share=0.2``: the real-knowledge set. Which facts to use depends on the
      model (those it knows), so this returns ``{"real": RealSplit, "name": spec}``, checked but not split yet;
      :func:`real_splits` splits it once the model is loaded (``session.start`` does).

    Returns ``{"forget": Dataset, "retain": Dataset, "name": spec}`` with ``prompt`` and ``answer`` columns.
    """
    from .world import check_splits

    if spec is None or spec == "world":
        return None
    kind, sep, where = str(spec).partition(":")
    if kind == "real":
        return {"real": RealSplit.parse(where, seed=seed), "name": str(spec)}
    if not sep or not where:
        raise ValueError(f"DATA={spec!r} is not a data source: use one of {', '.join(DATA_KINDS)}.")
    if kind == "tofu":
        out = load_tofu(where, forget=split, max_retain=max_retain, seed=seed)
    elif kind == "qa":
        out = load_qa_splits(where)
    elif kind == "wmdp":
        files = [f for f in where.split(",") if f]
        if len(files) != 2:
            raise ValueError(f"DATA={spec!r}: WMDP-style data needs a forget file and a retain file, "
                             "e.g. wmdp:wmdp_bio.json,mmlu.json.")
        out = {"forget": load_multiple_choice(files[0]), "retain": load_multiple_choice(files[1])}
        if max_retain and len(out["retain"]) > max_retain:
            out["retain"] = out["retain"].select(sorted(random.Random(seed).sample(range(len(out["retain"])),
                                                                                   max_retain)))
    elif kind == "conceptvectors":
        raise ValueError("A ConceptVectors file holds concepts and their value vectors, not forget / retain answers: "
                         "notebook 03 reads it (DATA = 'conceptvectors:FILE.json'), and so does "
                         "unlearn_utils.concept_files.concept_source / load_conceptvectors.")
    else:
        raise ValueError(f"Unknown data source {kind!r} in DATA={spec!r}: use one of {', '.join(DATA_KINDS)}.")
    check_splits(forget=out["forget"], retain=out["retain"])
    return {**out, "name": str(spec)}
