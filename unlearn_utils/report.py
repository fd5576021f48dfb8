"""The reproduction report: each seed paper's headline claim next to what this run measured.

``write_summary(report_dir)`` reads the headline numbers the notebooks saved (``results/<notebook>.json``) and
their wall times (``timings.json``) and writes ``summary.md`` and ``summary.html``. Every "holds?" cell is computed
from this run's numbers by the claim's rule, printed beside it, never written by hand; a claim whose notebook did
not run (or ran in smoke mode, where numbers mean nothing) says so.

Two runs, two columns. ``make reproduce MODEL=smollm2-135m`` writes the real model's run into its own folder,
``reports/smollm2-135m/`` (its ``run.json`` names the model). When the world's report folder holds such a
sub-folder, the world's ``summary.md`` shows each claim's verdict on the world and on that model side by side, each
computed by the same rule from its own run's results, and says in a sentence where they disagree. With one run
the summary is the one-column table.

Thresholds, with a tolerance. Every rule compares a number with its threshold through :func:`reaches` /
:func:`at_most`, which count a value within :data:`TOLERANCE` (1e-9) of the threshold as on it: the numbers are
ratios and differences of counts, and an exact tie computed in floating point can land a hair on the wrong side
(0.3 - 0.2 is 0.09999999999999998, short of "10 points"; 3 right of 10 against 2 of 10 is exactly 10 points).

Not measured, with a reason. A notebook that cannot measure a claim's numbers on some model or data records why,
under the key ``not_measured`` of its results, by rule id (see :data:`RULES` and :attr:`Claim.rules`)::

    S.record(not_measured=report.not_measured(rtt_recovers="no retain model on the real model, so no floor"))

which saves ``"not_measured": {"rtt_recovers": "no retain model ..."}`` in ``results/<notebook>.json``. Every claim
decided by one of those rules then shows "not measured" and the reason instead of a verdict. A claim whose numbers
are missing from the results without a reason shows "unknown", naming the missing number (a notebook's bug).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


TOLERANCE = 1e-9
"""How far on the wrong side of a threshold a number may fall and still count as on it (see the module docstring);
far below the 1 / n^2 that separates two different ratios of counts up to n = 10,000."""


def reaches(value: float, threshold: float, tolerance: float = TOLERANCE) -> bool:
    """``value >= threshold`` up to ``tolerance`` (a tie computed in floating point reaches the threshold)."""
    return bool(value >= threshold - tolerance)


def at_most(value: float, threshold: float, tolerance: float = TOLERANCE) -> bool:
    """``value <= threshold`` up to ``tolerance``."""
    return bool(value <= threshold + tolerance)


# ----------------------------------------------------------------------------------------------
# Verdict rules: each a function with a short id and the sentence it decides. A notebook records its verdicts
# under those sentences (report.verdicts); the summary reads them back by id and applies the same functions to the
# numbers the notebooks saved, so a rule and its wording live in one place.
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    id: str
    says: str                                   # the claim in words; "{name}" is filled in per model or method
    test: Callable[..., bool | None]            # evidence -> holds (True / False), or None when not measurable


RULES: dict[str, Rule] = {}


def rule(id: str, says: str):
    """Register the decorated function as the verdict rule ``id`` deciding ``says``."""
    def register(test):
        if id in RULES:
            raise ValueError(f"A verdict rule with id {id!r} is already registered.")
        RULES[id] = Rule(id, says, test)
        return test
    return register


def _decide(rule_id: str, evidence) -> bool | None:
    holds = RULES[rule_id].test(*(evidence if isinstance(evidence, tuple) else (evidence,)))
    return None if holds is None else bool(holds)


def verdicts(**evidence) -> dict[str, bool | None]:
    """``{sentence: holds}`` for each rule id given, in order; each value is the rule's evidence (one argument, or a
    tuple of them). ``verdicts(quantization_back=gains)`` -> ``{"4-bit quantization brings back ...": True}``."""
    return {RULES[rule_id].says: _decide(rule_id, ev) for rule_id, ev in evidence.items()}


def verdicts_each(rule_id: str, evidence: dict) -> dict[str, bool | None]:
    """The rule ``rule_id`` for each ``{name: evidence}`` (a sentence per model or method)."""
    return {RULES[rule_id].says.format(name=name): _decide(rule_id, ev) for name, ev in evidence.items()}


def recorded(results: dict, rule_id: str, name: str | None = None) -> bool | None:
    """The verdict a notebook recorded for rule ``rule_id`` (KeyError if it recorded none)."""
    return results["verdicts"][RULES[rule_id].says.format(name=name)]


def not_measured(**reasons: str) -> dict[str, str]:
    """``{rule_id: reason}`` for a notebook's results key ``not_measured``: why it could not measure a rule's numbers
    on this model or data. Unknown rule ids are refused here, when the notebook runs, not in the summary."""
    unknown = sorted(set(reasons) - set(RULES))
    if unknown:
        raise KeyError(f"No verdict rule with id {', '.join(map(repr, unknown))}; the ids are {sorted(RULES)}.")
    return {rule_id: str(reason) for rule_id, reason in reasons.items()}


def print_verdicts(found: dict[str, bool | None]) -> None:
    """One line per verdict: HOLDS, DOES NOT HOLD or NOT MEASURED, then the claim."""
    for claim, holds in found.items():
        print(f"  {'NOT MEASURED' if holds is None else 'HOLDS' if holds else 'DOES NOT HOLD'}: {claim}")


@rule("patching_restores", "{name}: patching the MLP coefficients brings the answers back (max KRS > 0.5) and "
      "restoring the value vectors brings back less")
def patching_restores(summary) -> bool:
    """summary: one method's row of notebook 02's summary ("max patch mlp", "max restore down_proj")."""
    return not at_most(summary["max patch mlp"], 0.5) and summary["max restore down_proj"] < summary["max patch mlp"]


@rule("vector_unchanged", "fine-tuning leaves the vector nearly unchanged (cosine >= 0.95)")
def vector_unchanged(cosines) -> bool:
    return all(reaches(c, 0.95) for c in cosines)


@rule("topic_forgotten", "fine-tuning still forgets the topic (accuracy <= 10%)")
def topic_forgotten(target_accuracies, original_accuracy: float) -> bool | None:
    if not reaches(original_accuracy, 0.5):  # forgetting a topic the model never knew proves nothing
        return None
    return all(at_most(a, 0.1) for a in target_accuracies)


@rule("needle_matches", "Needle forgets as much as the best fine-tuning method and keeps unrelated topics better")
def needle_matches(needle, fine_tuned, original_accuracy: float) -> bool | None:
    """needle / fine_tuned: tables with "target topic acc" and "unrelated topics acc" per model."""
    if not reaches(original_accuracy, 0.5):
        return None
    best_needle = needle.sort_values("target topic acc").iloc[0]
    best_ft = fine_tuned.sort_values("unrelated topics acc").iloc[-1]
    return (at_most(best_needle["target topic acc"], best_ft["target topic acc"] + 0.1)
            and best_needle["unrelated topics acc"] > best_ft["unrelated topics acc"])


@rule("quantization_back", "4-bit quantization brings back >= 10 points of forget accuracy for some method")
def quantization_back(gains: dict) -> bool:
    return reaches(max(gains.values()), 0.1)


@rule("rtt_recovers", "RTT recovers V far above the floor (>= 50% of the gap) for {name}")
def rtt_recovers(recovery_above_floor: float) -> bool | None:
    if not math.isfinite(recovery_above_floor):  # no retain model, so no floor
        return None
    return reaches(recovery_above_floor, 0.5)


@rule("grun_keeps_retain", "GRUN grad_diff keeps more retain accuracy than vanilla grad_diff at equal forget accuracy")
def grun_keeps_retain(grun, vanilla, forget_at_most: float) -> bool:
    """grun / vanilla: each run's numbers at its first checkpoint with forget accuracy <= forget_at_most."""
    return (at_most(grun["forget"], forget_at_most) and at_most(vanilla["forget"], forget_at_most)
            and grun["retain"] > vanilla["retain"])


@rule("grun_keeps_topics", "GRUN grad_diff keeps more topic accuracy (utility) than vanilla grad_diff at equal "
      "forget accuracy")
def grun_keeps_topics(grun, vanilla, forget_at_most: float) -> bool | None:
    if grun["topics"] != grun["topics"]:  # NaN: the data has no topic questions
        return None
    return (at_most(grun["forget"], forget_at_most) and at_most(vanilla["forget"], forget_at_most)
            and grun["topics"] > vanilla["topics"])


@rule("grun_is_small", "GRUN trains fewer than 1% of the parameters")
def grun_is_small(trainable: int, n_parameters: int) -> bool:
    return trainable < 0.01 * n_parameters


@rule("gate_separates", "the gate separates unseen forget from retain prompts (AUC >= 0.95)")
def gate_separates(aucs: dict, unseen: bool) -> bool | None:
    return reaches(min(aucs.values()), 0.95) if unseen else None  # None: no held-out phrasings in the data


@rule("grun_quantization_robust", "GRUN's forget accuracy stays low under 4-bit (rises < 10 points)")
def grun_quantization_robust(gains: dict) -> bool:
    return not reaches(max(gains.values()), 0.10)


@rule("vanilla_quantization_back", "vanilla's forget accuracy comes back under 4-bit (>= 10 points)")
def vanilla_quantization_back(gains: dict) -> bool:
    return reaches(max(gains.values()), 0.10)


@rule("sequential_holds", "after all sequential stages, every earlier forget set stays at or below 10%")
def sequential_holds(table, n_stages: int) -> bool | None:
    """table: accuracy per stage (rows) on each forget set ("forget set j" columns)."""
    if n_stages <= 1:
        return None
    return at_most(table.loc[n_stages, [f"forget set {j}" for j in range(1, n_stages)]].max(), 0.10)


# ----------------------------------------------------------------------------------------------
# The seed papers' claims, each measured by a rule above
# ----------------------------------------------------------------------------------------------
@dataclass
class Claim:
    paper: str
    claim: str
    notebook: str
    rule: str                                              # how "holds" is decided, in words
    measure: Callable[[dict], tuple[str, bool]]            # results of the notebook -> (what was measured, holds)
    rules: tuple[str, ...] = ()                            # ids of the verdict rules it uses (for not_measured)


def _patching(r: dict) -> tuple[str, bool]:
    rows = r["summary"]
    parts, holds = [], True
    for m, v in rows.items():
        parts.append(f"{m}: patch MLP coefficients KRS {v['max patch mlp']:.2f} (best site {v['best site']}, "
                     f"{v['best recovered acc']:.0%} of answers back), "
                     f"restore down_proj {v['max restore down_proj']:.2f}")
        holds &= patching_restores(v)
    return "; ".join(parts), bool(holds)


def _concept_unchanged(r: dict) -> tuple[str, bool]:
    rows = {k: v for k, v in r["table"].items() if not k.startswith("needle") and k != "original"}  # methods only
    cos = [v["cosine"] for v in rows.values()]
    target = [v["target topic acc"] for v in rows.values()]
    text = (f"topic '{r['topic']}': cosine of its vector to the original {min(cos):.3f}-{max(cos):.3f} after "
            f"fine-tuning unlearning, while topic accuracy fell to at most {max(target):.0%}")
    if recorded(r, "topic_forgotten") is None:  # the original never knew it
        return text + " (the original did not know the topic)", None
    return text, bool(vector_unchanged(cos) and all(at_most(t, 0.1) for t in target))


def _concept_ablation(r: dict) -> tuple[str, bool]:
    needle = {k: v for k, v in r["table"].items() if k.startswith("needle")}
    best = min(needle.items(), key=lambda kv: kv[1]["target topic acc"])
    text = (f"causal check: noise on a topic's vector drops its answers' log-prob {r['causal_ratio']:.1f}x more than "
            f"other topics'; {best[0]}: topic accuracy {best[1]['target topic acc']:.0%}, unrelated topics "
            f"{best[1]['unrelated topics acc']:.0%}")
    ok = recorded(r, "needle_matches")
    return text, None if ok is None else bool(ok)


def _quantization(r: dict) -> tuple[str, bool]:
    own = {f"{m} on its own grid {r.get('own_grid')}": g for m, g in (r.get("quant_gain_own_grid") or {}).items()}
    gains = {**r["quant_gain_4bit"], **r["quant_gain_small_lr"], **own}
    best = max(gains, key=gains.get)
    text = "forget accuracy gained at 4 bits: " + ", ".join(f"{m} {g:+.3f}" for m, g in gains.items())
    if own:  # a checkpoint whose weights already sit on a 4-bit grid: a gain there is that grid, not the paper's cause
        text += (f"; on {r.get('own_grid')}, the grid the checkpoint's weights sit on, unlearning's sub-step changes "
                 "round back to the original's codes (not the paper's mechanism)")
    return text + f" (largest: {best})", bool(quantization_back(gains))


def _rtt(r: dict) -> tuple[str, bool]:
    rates = r["rtt"]
    text = (f"floor {r['rtt_floor']:.2f}, ceiling {r['rtt_ceiling']:.2f}; recovery above the floor: "
            + ", ".join(f"{m} {v['recovery above floor']:.2f}" for m, v in rates.items()))
    return text, any(rtt_recovers(v["recovery above floor"]) is True for v in rates.values())


def _grun_tradeoff(r: dict) -> tuple[str, bool]:
    g, v = r["retain_at_equal_forget"], r["topics_at_equal_forget"]
    text = (f"at equal forget accuracy: retain {g['GRUN']:.3f} (GRUN) vs {g['vanilla']:.3f} (vanilla GD); topic "
            f"questions {v['GRUN']:.3f} vs {v['vanilla']:.3f}")
    return text, bool(recorded(r, "grun_keeps_retain") and v["GRUN"] >= v["vanilla"])


def _grun_quant(r: dict) -> tuple[str, bool]:
    gains = r["quantization_gain"]
    text = "forget accuracy gained at 4 bits: " + ", ".join(f"{m} {g:+.3f}" for m, g in gains.items())
    grun = {m: g for m, g in gains.items() if m.startswith("GRUN")}
    vanilla = {m: g for m, g in gains.items() if m.startswith("vanilla")}
    return text, bool(grun_quantization_robust(grun) and vanilla_quantization_back(vanilla))


CLAIMS = [
    Claim("Hong et al. 2410.06606", "Patching the MLP coefficients of the last layers brings forgotten answers back; "
          "restoring value vectors brings back less", "02_patching_and_restoration",
          "every method: max KRS of MLP-coefficient patching > 0.5 and above that of restoring the down projection",
          _patching, ("patching_restores",)),
    Claim("ConceptVectors 2406.11614", "Fine-tuning unlearning barely changes a concept's vector while the concept "
          "is forgotten", "03_concept_vectors",
          "cosine to the original >= 0.95 and topic accuracy <= 10%, every method",
          _concept_unchanged, ("vector_unchanged", "topic_forgotten")),
    Claim("ConceptVectors 2406.11614", "Ablating the concept vector (Needle) removes the concept as well as "
          "fine-tuning, with less collateral damage", "03_concept_vectors",
          "best Needle variant's topic accuracy within 10 points of the best fine-tuning method's, "
          "unrelated topics higher",
          _concept_ablation, ("needle_matches",)),
    Claim("Zhang et al. 2410.16454", "4-bit quantization brings forgotten knowledge back for utility-constrained "
          "methods", "05_recovery_attacks", "some method gains >= 10 points of forget accuracy at 4 bits",
          _quantization, ("quantization_back",)),
    Claim("Deeb & Roger 2410.08827", "Fine-tuning on some forgotten facts (T) recovers other, independent ones (V)",
          "05_recovery_attacks",
          "some method recovers >= 50% of the gap between the retain-model floor and the ceiling",
          _rtt, ("rtt_recovers",)),
    Claim("GRUN 2502.17823", "GRUN improves the forget/retain trade-off of fine-tuning unlearning",
          "04_grun",
          "GRUN GD keeps more retain accuracy AND no less topic accuracy than vanilla GD at equal forget accuracy",
          _grun_tradeoff, ("grun_keeps_retain", "grun_keeps_topics")),
    Claim("GRUN 2502.17823", "GRUN stays unlearned under 4-bit quantization where vanilla fine-tuning does not",
          "04_grun", "GRUN gains < 10 points at 4 bits AND vanilla gains >= 10 points", _grun_quant,
          ("grun_quantization_robust", "vanilla_quantization_back")),
]


_unknown_ids = {i for c in CLAIMS for i in c.rules} - set(RULES)
assert not _unknown_ids, f"CLAIMS name verdict rules that do not exist: {sorted(_unknown_ids)}"

# How the summary names a run's model (a name not listed here is shown as it is).
MODEL_LABELS = {"world": "World", "smollm2-135m": "SmolLM2-135M"}


@dataclass
class Run:
    """One reproduction run: its model and what its report folder holds (results, timings.json, run.json)."""
    model: str                                             # "world" or a real model's name (run.json's "model")
    results: dict[str, dict]
    timings: dict[str, float] = field(default_factory=dict)
    run: dict | None = None
    folder: str | None = None                              # where it was read from, relative to the summary

    @property
    def label(self) -> str:
        return MODEL_LABELS.get(self.model, self.model)


def load_results(report_dir: str | os.PathLike) -> dict[str, dict]:
    """Every notebook's saved numbers, by notebook name."""
    folder = Path(report_dir) / "results"
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.exists() else {}


def load_run(report_dir: str | os.PathLike) -> Run:
    """The run in ``report_dir``; its model is run.json's ``"model"`` (a world run's run.json names none)."""
    report_dir = Path(report_dir)
    timings_file, run_file = report_dir / "timings.json", report_dir / "run.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    run = json.loads(run_file.read_text()) if run_file.exists() else None
    return Run((run or {}).get("model") or "world", load_results(report_dir), timings, run)


def other_runs(report_dir: str | os.PathLike) -> list[Run]:
    """Runs of other models inside ``report_dir`` (``reports/<model>/``, written by ``reproduce --model``)."""
    found = []
    subs = sorted(p for p in Path(report_dir).iterdir() if p.is_dir()) if Path(report_dir).is_dir() else []
    for sub in subs:
        if (sub / "run.json").exists() and (sub / "results").is_dir():
            run = load_run(sub)
            if run.model != "world":
                run.folder = sub.name
                found.append(run)
    return found


def claims_table(results: dict[str, dict]) -> list[dict]:
    """One row per claim: paper, claim, measured, holds ('yes' / 'no' / why it could not be decided), rule."""
    rows = []
    for c in CLAIMS:
        r = results.get(c.notebook)
        said = (r or {}).get("not_measured")
        reasons = [str(said[i]) for i in c.rules if i in said] if isinstance(said, dict) else []
        if r is None:
            measured, holds = "notebook not run", "not run"
        elif r.get("smoke"):
            measured, holds = "smoke run (tiny world): numbers not meaningful", "not measured"
        elif reasons:  # the notebook said why it could not measure this
            measured, holds = "; ".join(dict.fromkeys(reasons)), "not measured"
        else:
            try:
                measured, ok = c.measure(r)
                holds = "not measured (see the notebook)" if ok is None else "yes" if ok else "no"
            except (KeyError, TypeError, ValueError) as e:
                measured = f"numbers missing from results/{c.notebook}.json ({type(e).__name__}: {e})"
                holds = "unknown"  # a bug, not a design: a notebook that cannot measure a claim says why
        rows.append({"paper": c.paper, "claim": c.claim, "measured": measured, "holds": holds, "rule": c.rule,
                     "notebook": c.notebook})
    return rows


def disagreements(first: Run, second: Run) -> list[str]:
    """A sentence per claim that holds in one run and not in the other, naming both verdicts and their numbers."""
    said = {"yes": "holds", "no": "does not hold"}
    out = []
    for a, b in zip(claims_table(first.results), claims_table(second.results)):
        if a["holds"] in said and b["holds"] in said and a["holds"] != b["holds"]:
            out.append(f"{a['paper']}, \"{a['claim']}\": {first.label} and {second.label} disagree: on "
                       f"{first.label} it {said[a['holds']]} ({a['measured']}); on {second.label} it "
                       f"{said[b['holds']]} ({b['measured']}).")
    return out


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(df, digits: int = 3) -> str:
    """A DataFrame as a Markdown table (numbers to ``digits`` decimals, NaN blank), without extra packages."""
    def cell(v):
        if isinstance(v, float):
            return "" if v != v else f"{v:.{digits}f}"
        return _md_cell(v)

    lines = ["| " + " | ".join(_md_cell(c) for c in df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _how_run(run: dict) -> str:
    how = (f"{run['jobs']} notebooks at a time, {run.get('threads_per_notebook')} thread(s) each; a notebook's "
           "time includes waiting for a model that another one was training" if run.get("jobs", 1) > 1
           else "one notebook at a time")
    if run.get("reused"):
        how += (f"; {', '.join(run['reused'])} copied from an identical earlier run (notebook, parameters, kit, "
                "data and packages unchanged), whose times the table gives")
    return how


def _what(run: Run) -> str:
    """What a run measured on, in words: the default world, or a model's name and the data it was given."""
    if run.model == "world":
        return "the default world"
    data = (run.run or {}).get("data")
    return f"`{run.model}`" + (f" with DATA={data!r}" if data else "")


def _verdict_lines(run: Run) -> list[str]:
    lines = []
    for nb, r in run.results.items():
        for claim, ok in (r.get("verdicts") or {}).items():
            said = "not measured (see the notebook)" if ok is None else "holds" if ok else "does not hold"
            lines.append(f"- `{nb}`: {said}: {claim}")
    return lines


def _audit_lines(run: Run, named: bool) -> list[str]:
    lines = []
    audits = {nb: r["audit_verdicts"] for nb, r in run.results.items()
              if r.get("audit_verdicts") and not r.get("smoke")}
    for nb, by_model in audits.items():
        lines += ["", f"## The unlearning audit ({nb}{', ' + run.label if named else ''})", ""]
        for model, verdicts in by_model.items():
            lines += [f"**{model}**", ""] + [f"- {_md_cell(v)}" for v in verdicts] + [""]
    return lines


def summary_markdown(results: dict[str, dict], timings: dict[str, float], run: dict | None = None,
                     others: list[Run] = ()) -> str:
    """The summary of one run (``results``, ``timings``, ``run``: its run.json), with a column per run in ``others``
    beside it (other models' runs, each judged by the same rules from its own results)."""
    first = Run((run or {}).get("model") or "world", results, timings, run)
    if others:
        return _summary_side_by_side([first, *others])
    title = "" if first.model == "world" else f" ({first.label})"
    on = _what(first) if first.model == "world" else f"{first.label} ({_what(first)})"
    lines = [f"# unlearn-kit: reproduction summary{title}", "",
             f"Each row: a seed paper's headline claim, what this run measured on {on}, and whether the "
             "claim holds by the rule in the last column (computed from the numbers, not written by hand).", "",
             "| paper | claim | what this run measured | holds? | rule | notebook |", "|---|---|---|---|---|---|"]
    for row in claims_table(results):
        lines.append("| " + " | ".join(_md_cell(row[k]) for k in ("paper", "claim", "measured", "holds", "rule",
                                                                     "notebook")) + " |")
    lines += ["", "## Every verdict the notebooks computed", ""] + _verdict_lines(first) + _audit_lines(first, False)
    lines += ["", "## Wall time per notebook", "", "| notebook | seconds |", "|---|---|"]
    lines += [f"| {nb} | {secs:.0f} |" for nb, secs in timings.items()]
    if timings:
        lines.append(f"| **sum** | **{sum(timings.values()):.0f}** |")
    if run and run.get("wall_seconds") is not None:
        lines += ["", f"The whole run took {run['wall_seconds']:.0f} s ({_how_run(run)})."]
    return "\n".join(lines) + "\n"


def _summary_side_by_side(runs: list[Run]) -> str:
    """The claims table with a measured / holds pair of columns per run, then where the runs disagree."""
    first = runs[0]
    where = "; ".join(f"{r.label}: {_what(r)}" + (f", from `{r.folder}/`" if r.folder else "") for r in runs)
    lines = ["# unlearn-kit: reproduction summary", "",
             f"Each row: a seed paper's headline claim, what each run measured ({where}), and whether the claim "
             "holds in each run by the rule in the rule column: the same rule, computed from each run's own "
             "numbers, not written by hand.", ""]
    header = ["paper", "claim"] + [f"{r.label}: {k}" for r in runs for k in ("measured", "holds?")] + ["rule",
                                                                                                        "notebook"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    tables = [claims_table(r.results) for r in runs]
    for rows in zip(*tables):
        cells = [rows[0]["paper"], rows[0]["claim"]] + [x for row in rows for x in (row["measured"], row["holds"])]
        lines.append("| " + " | ".join(_md_cell(c) for c in cells + [rows[0]["rule"], rows[0]["notebook"]]) + " |")
    lines += ["", "## Where the runs disagree", ""]
    for other in runs[1:]:
        found = disagreements(first, other)
        lines += [f"- {_md_cell(s)}" for s in found] or [
            f"{first.label} and {other.label} agree on every claim both of them measured."]
    lines += ["", "## Every verdict the notebooks computed"]
    for r in runs:
        lines += ["", f"### {r.label}", ""] + (_verdict_lines(r) or ["(none recorded)"])
    for r in runs:
        lines += _audit_lines(r, True)
    names = list(dict.fromkeys(nb for r in runs for nb in r.timings))
    lines += ["", "## Wall time per notebook", "",
              "| notebook | " + " | ".join(f"{r.label} (s)" for r in runs) + " |", "|" + "---|" * (len(runs) + 1)]
    lines += ["| " + " | ".join([nb] + [f"{r.timings[nb]:.0f}" if nb in r.timings else "" for r in runs]) + " |"
              for nb in names]
    if names:
        lines.append("| **sum** | " + " | ".join(f"**{sum(r.timings.values()):.0f}**" for r in runs) + " |")
    took = [f"the {r.label} run {r.run['wall_seconds']:.0f} s ({_how_run(r.run)})" for r in runs
            if r.run and r.run.get("wall_seconds") is not None]
    if took:
        lines += ["", "Wall time: " + "; ".join(took) + "."]
    return "\n".join(lines) + "\n"


def write_summary(report_dir: str | os.PathLike, others: bool = True) -> Path:
    """Write ``summary.md`` and ``summary.html`` into ``report_dir``; returns the markdown path. With ``others``,
    runs of other models in its sub-folders (``reports/<model>/``) get a column beside this one."""
    import mistune

    report_dir = Path(report_dir)
    this = load_run(report_dir)
    text = summary_markdown(this.results, this.timings, this.run, other_runs(report_dir) if others else [])
    md = report_dir / "summary.md"
    md.write_text(text)
    body = mistune.create_markdown(plugins=["table"])(text)
    (report_dir / "summary.html").write_text(
        "<!doctype html><meta charset='utf-8'><title>unlearn-kit summary</title>"
        "<style>body{font-family:sans-serif;max-width:75em;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}</style>" + body)
    return md
