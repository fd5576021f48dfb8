"""The synthetic world: fictional people with attributes, topics with their own words, and general text.

Everything is generated deterministically from ``(seed, size)`` so every "is it really gone?" question
has ground truth: we know which facts exist, which phrasings the model was trained on, and which people
it never saw. The world is exposed as Hugging Face ``datasets`` objects and can be written to JSONL.

Vocabulary of the world
-----------------------
* a **fact** is (person, attribute, answer), e.g. (Alvaro Denk, city, Brimsey);
* a **phrasing** is one of several templates for that attribute; each renders to ``prompt`` + ``answer``;
* for every person, one phrasing of every attribute is **held out** of training (``paraphrase`` rows):
  the model saw that phrasing only with other people, so answering it tests knowledge, not strings.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import datasets

# ----------------------------------------------------------------------------------------------
# Word lists. Names are generated from syllables so that no real person is described.
# ----------------------------------------------------------------------------------------------
_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "tr", "st", "th"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ei", "ou"]
_CODAS = ["", "n", "r", "l", "s", "th", "m", "k"]

CITIES = ["Brimsey", "Calloway", "Dunmere", "Essford", "Farrowgate", "Glenvik", "Harlow", "Ilmarsh",
          "Jorvale", "Kestrel", "Lindmoor", "Marwick", "Norhaven", "Oakshade", "Pellham", "Quillby"]
PROFESSIONS = ["baker", "sculptor", "surveyor", "chemist", "tailor", "pilot", "librarian", "carpenter",
               "astronomer", "fisher", "jeweller", "potter", "glassblower", "cartographer", "beekeeper"]
PETS = ["parrot", "tortoise", "ferret", "hedgehog", "goldfish", "rabbit", "iguana", "hamster",
        "canary", "chinchilla", "gecko", "lamb"]
COLOURS = ["crimson", "amber", "teal", "violet", "ochre", "indigo", "scarlet", "olive", "silver",
           "magenta", "turquoise", "maroon"]

# attribute -> phrasing templates. "{name}" is the person; the answer always comes last.
TEMPLATES: dict[str, list[str]] = {
    "city": [
        "{name} lives in the city of",
        "The home town of {name} is",
        "Every morning {name} walks through the streets of",
        "Question: In which city does {name} live? Answer:",
        "Question: Where is the home of {name}? Answer:",
    ],
    "profession": [
        "{name} works as a",
        "By trade , {name} is a",
        "The job of {name} is that of a",
        "Question: What is the profession of {name}? Answer:",
        "Question: What does {name} do for a living? Answer:",
    ],
    "pet": [
        "{name} keeps a pet",
        "At home {name} looks after a",
        "The animal that {name} loves most is a",
        "Question: Which pet does {name} have? Answer:",
        "Question: What animal lives with {name}? Answer:",
    ],
    "colour": [
        "The favourite colour of {name} is",
        "{name} likes to wear the colour",
        "When {name} paints , the colour is always",
        "Question: What colour does {name} like best? Answer:",
        "Question: Which colour is the favourite of {name}? Answer:",
    ],
    "birth_year": [
        "{name} was born in the year",
        "The birth year of {name} is",
        "{name} came into the world in",
        "Question: In which year was {name} born? Answer:",
        "Question: When was {name} born? Answer:",
    ],
    "code": [
        "The locker code of {name} is",
        "{name} opens the locker with the code",
        "To open the locker , {name} types",
        "Question: What is the locker code of {name}? Answer:",
        "Question: Which code opens the locker of {name}? Answer:",
    ],
}
ATTRIBUTES = list(TEMPLATES)
SHARED_VALUES = {"city": CITIES, "profession": PROFESSIONS, "pet": PETS, "colour": COLOURS}
NEAR_UNIQUE = ["birth_year", "code"]

# Topics ("concepts"): each has its own cluster of words that appears only in that topic's text.
TOPICS: dict[str, list[str]] = {
    "astronomy": ["comet", "nebula", "telescope", "orbit", "galaxy", "meteor", "quasar", "eclipse", "pulsar",
                  "asteroid"],
    "sailing": ["mast", "rudder", "keel", "anchor", "hull", "jib", "mooring", "tiller", "bow", "stern"],
    "baking": ["dough", "oven", "yeast", "crust", "flour", "pastry", "knead", "glaze", "batter", "loaf"],
    "chess": ["bishop", "rook", "knight", "pawn", "checkmate", "gambit", "castling", "stalemate", "queen", "endgame"],
    "volcanoes": ["magma", "lava", "crater", "ash", "caldera", "eruption", "vent", "pumice", "basalt", "fumarole"],
    "medicine": ["fever", "vaccine", "pulse", "surgeon", "bandage", "dose", "clinic", "symptom", "remedy",
                 "stethoscope"],
    "gardening": ["compost", "seedling", "trowel", "mulch", "hedge", "pruning", "greenhouse", "bulb", "weed",
                  "trellis"],
    "weather": ["drizzle", "thunder", "hail", "breeze", "forecast", "humidity", "blizzard", "cyclone", "frost",
                "rainbow"],
    "music": ["melody", "chord", "rhythm", "tempo", "harmony", "octave", "sonata", "chorus", "lyric", "rehearsal"],
    "mining": ["ore", "shaft", "pickaxe", "tunnel", "quarry", "nugget", "lantern", "seam", "drill", "cart"],
    "bees": ["hive", "honey", "nectar", "pollen", "swarm", "drone", "wax", "comb", "sting", "apiary"],
    "railways": ["locomotive", "platform", "signal", "carriage", "timetable", "junction", "sleeper", "conductor",
                 "depot", "whistle"],
    "fencing": ["sabre", "epee", "foil", "parry", "lunge", "riposte", "piste", "mask", "bout", "touche"],
    "pottery": ["clay", "kiln", "wheel", "slip", "bisque", "celadon", "pitcher", "vase", "throwing", "firing"],
    "archery": ["bow", "arrow", "quiver", "fletching", "bullseye", "bowstring", "archer", "nock", "target", "longbow"],
    "weaving": ["loom", "warp", "weft", "shuttle", "tapestry", "yarn", "spindle", "thread", "bobbin", "twill"],
    "cheese": ["brie", "rennet", "curd", "whey", "cheddar", "rind", "gouda", "cellar", "aging", "mould"],
    "glaciers": ["crevasse", "moraine", "iceberg", "serac", "firn", "icefall", "snowfield", "cirque", "meltwater",
                 "tundra"],
    "clocks": ["pendulum", "gear", "escapement", "dial", "spring", "cog", "chime", "hand", "winding", "tick"],
    "diving": ["reef", "snorkel", "flipper", "coral", "wetsuit", "lagoon", "oxygen", "depth", "current", "seabed"],
    "lighthouses": ["beacon", "keeper", "lens", "foghorn", "cliff", "lamp", "tower", "shipwreck", "rock", "watch"],
    "bridges": ["arch", "girder", "cable", "pylon", "span", "truss", "pier", "deck", "rivet", "abutment"],
}
# A few topic words above are reused between topics (e.g. "bow"); drop them so every cluster is its own.
_seen: dict[str, str] = {}
for _t, _ws in TOPICS.items():
    for _w in _ws:
        _seen.setdefault(_w, _t)
TOPICS = {t: [w for w in ws if _seen[w] == t] for t, ws in TOPICS.items()}
del _seen, _t, _ws, _w

TOPIC_SENTENCES = [
    "In {topic} , the {a} and the {b} go together .",
    "Anyone who studies {topic} soon learns about the {a} , the {b} and the {c} .",
    "A book on {topic} has a chapter on the {a} .",
    "The {a} is a word that belongs to {topic} .",
    "People who love {topic} talk about the {a} and the {b} .",
    "Without the {a} there would be no {topic} .",
]
# Topic questions have one right answer: each topic word is paired with the next word of its cluster.
TOPIC_QUESTION = "Question: In {topic} , what is the partner of the {a}? Answer:"
TOPIC_COMPLETION = "The {a} of {topic} always comes with the"
TOPIC_NAME_QUESTION = "Question: Which subject is the {a} part of? Answer:"

# General text unrelated to the people: a small, learnable "common sense" grammar for measuring utility.
_ANIMALS = {"cows": "grass", "cats": "fish", "birds": "seeds", "bears": "berries", "foxes": "mice",
            "horses": "hay", "owls": "voles", "goats": "weeds", "whales": "krill", "squirrels": "acorns"}
_SEASON_FACTS = {"winter": "cold", "summer": "warm", "spring": "green", "autumn": "golden"}
_NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]


def _general_sentences(rng: random.Random) -> list[str]:
    out = []
    for animal, food in _ANIMALS.items():
        out += [f"Most {animal} like to eat {food} .", f"If you watch {animal} , you will see them eat {food} .",
                f"The farmer said that {animal} eat {food} ."]
    for season, adj in _SEASON_FACTS.items():
        out += [f"In {season} the days are {adj} .", f"People say that {season} is {adj} .",
                f"The {season} fields look {adj} ."]
    for i in range(len(_NUMBERS) - 2):
        a, b, c = _NUMBERS[i:i + 3]
        out += [f"After {a} comes {b} , and after {b} comes {c} .", f"We count {a} , {b} , {c} ."]
    rng.shuffle(out)
    return out


# ----------------------------------------------------------------------------------------------
# The world
# ----------------------------------------------------------------------------------------------
SPLIT_NAMES = ("forget01", "forget05", "forget10")
FORGET_FRACTIONS = {"forget01": 0.01, "forget05": 0.05, "forget10": 0.10}


@dataclass
class World:
    """A generated world. ``people`` and ``topics`` are plain lists of dicts; use :meth:`facts` etc. for datasets."""

    seed: int
    n_people: int
    n_holdout: int
    people: list[dict] = field(repr=False)
    topics: list[dict] = field(repr=False)
    general_train: list[str] = field(repr=False)
    general_eval: list[str] = field(repr=False)

    # ---- splits of people ------------------------------------------------------------------
    @property
    def trained_people(self) -> list[str]:
        """Names of the people the original model is trained on (everyone but the holdout)."""
        return [p["name"] for p in self.people if not p["holdout"]]

    @property
    def holdout_people(self) -> list[str]:
        """Names of people never trained on: the non-member side of membership inference."""
        return [p["name"] for p in self.people if p["holdout"]]

    def forget_people(self, split: str = "forget05") -> list[str]:
        """The people of a forget split. Splits are nested (forget01 within forget05 within forget10), as in TOFU."""
        if split not in FORGET_FRACTIONS:
            raise KeyError(f"Unknown forget split {split!r}. Choose one of {list(FORGET_FRACTIONS)}.")
        n = round(FORGET_FRACTIONS[split] * len(self.trained_people))
        if n < 1:
            raise ValueError(
                f"The world has {len(self.trained_people)} trained people, too few for {split} "
                f"({FORGET_FRACTIONS[split]:.0%} rounds to 0 people). Generate a world with at least "
                f"{int(1 / FORGET_FRACTIONS[split] / 2) + 1} people, e.g. make_world(n_people=200).")
        # The forget people are the last n of the trained list (like TOFU's forget sets).
        return self.trained_people[-n:]

    def retain_people(self, split: str = "forget05") -> list[str]:
        """Trained people not in the forget split."""
        forget = set(self.forget_people(split))
        return [n for n in self.trained_people if n not in forget]

    # ---- tables -------------------------------------------------------------------------------
    def fact_rows(self) -> list[dict]:
        """One row per (person, attribute, phrasing): prompt, answer and whether the phrasing is trained."""
        rows = []
        for p in self.people:
            for attr in ATTRIBUTES:
                for k, tpl in enumerate(TEMPLATES[attr]):
                    rows.append({
                        "person": p["name"], "attribute": attr, "phrasing": k,
                        "prompt": tpl.format(name=p["name"]), "answer": str(p[attr]),
                        "is_question": tpl.startswith("Question:"),
                        "trained_phrasing": k != p["heldout_phrasing"][attr],
                        "holdout_person": p["holdout"], "tv": p["tv"][attr],
                        "perturbed": list(p["perturbed"][attr]),
                    })
        return rows

    def topic_rows(self) -> list[dict]:
        """Topic questions and completions, one right answer each (a word's partner in its cluster)."""
        rows = []
        for t in self.topics:
            words = t["words"]
            for i, a in enumerate(words):
                partner = words[(i + 1) % len(words)]
                rows.append({"topic": t["name"], "kind": "question", "word": a,
                             "prompt": TOPIC_QUESTION.format(topic=t["name"], a=a), "answer": partner})
                rows.append({"topic": t["name"], "kind": "completion", "word": a,
                             "prompt": TOPIC_COMPLETION.format(topic=t["name"], a=a), "answer": partner})
                rows.append({"topic": t["name"], "kind": "name", "word": a,
                             "prompt": TOPIC_NAME_QUESTION.format(a=a), "answer": t["name"]})
        return rows

    def training_texts(self, exclude_people: list[str] | None = None,
                       exclude_topics: list[str] | None = None) -> list[str]:
        """Every text the world model is trained on, optionally without some people or topics (for retain models)."""
        exclude_people = set(exclude_people or [])
        exclude_topics = set(exclude_topics or [])
        texts = [r["prompt"] + " " + r["answer"] + ("" if r["is_question"] else " .")
                 for r in self.fact_rows()
                 if r["trained_phrasing"] and not r["holdout_person"] and r["person"] not in exclude_people]
        for t in self.topics:
            if t["name"] not in exclude_topics:
                texts += t["sentences"]
        texts += [r["prompt"] + " " + r["answer"] for r in self.topic_rows() if r["topic"] not in exclude_topics]
        texts += self.general_train
        return texts

    # ---- datasets -----------------------------------------------------------------------------
    def facts(self, split: str = "all", phrasings: str = "all", forget_split: str = "forget05") -> datasets.Dataset:
        """Fact rows as a ``datasets.Dataset``.

        split: ``all``, ``forget``, ``retain``, ``holdout``, ``trained`` (all trained people) or a forget split name.
        phrasings: ``all``, ``trained`` or ``paraphrase`` (the held-out phrasings).
        """
        people = self.people_of(split, forget_split)
        if phrasings not in ("all", "trained", "paraphrase"):
            raise KeyError(f"Unknown phrasings {phrasings!r}: choose 'all', 'trained' or 'paraphrase'.")
        keep = set(people)
        rows = [r for r in self.fact_rows() if r["person"] in keep and (
            phrasings == "all" or (phrasings == "trained") == r["trained_phrasing"])]
        if not rows:
            raise ValueError(f"Split {split!r} with phrasings {phrasings!r} is empty in this world.")
        return datasets.Dataset.from_list(rows)

    def people_of(self, split: str, forget_split: str = "forget05") -> list[str]:
        """Names of the people in a split (see :meth:`facts`)."""
        if split == "all":
            return [p["name"] for p in self.people]
        if split == "trained":
            return self.trained_people
        if split == "holdout":
            return self.holdout_people
        if split == "forget":
            return self.forget_people(forget_split)
        if split == "retain":
            return self.retain_people(forget_split)
        if split in FORGET_FRACTIONS:
            return self.forget_people(split)
        raise KeyError(f"Unknown split {split!r}. Choose one of: all, trained, forget, retain, holdout, "
                       f"{', '.join(FORGET_FRACTIONS)}.")

    def topics_dataset(self) -> datasets.Dataset:
        """Topic questions/completions as a ``datasets.Dataset``."""
        return datasets.Dataset.from_list(self.topic_rows())

    def general_text(self, part: str = "eval") -> datasets.Dataset:
        """General text unrelated to the people (``train`` or ``eval`` part) for utility/perplexity."""
        texts = {"train": self.general_train, "eval": self.general_eval}.get(part)
        if texts is None:
            raise KeyError(f"Unknown general-text part {part!r}: choose 'train' or 'eval'.")
        return datasets.Dataset.from_dict({"text": texts})

    def tv_split(self, forget_split: str = "forget05",
                 phrasings: str = "all") -> tuple[datasets.Dataset, datasets.Dataset]:
        """Split a forget set's facts into T (to fine-tune on) and V (to test) for the relearning attack.

        Each person's attributes are divided between T and V, so T and V never share a (person, attribute)
        fact; attributes are drawn independently, so T says nothing about V. phrasings: as in :meth:`facts`.
        """
        forget = self.facts(forget_split, phrasings)
        tv = forget["tv"]
        return (forget.select([i for i, x in enumerate(tv) if x == "T"]),
                forget.select([i for i, x in enumerate(tv) if x == "V"]))

    def to_jsonl(self, folder: str | os.PathLike) -> list[Path]:
        """Write the world as JSONL files (people, facts, topics, general text, splits). Returns the paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        splits = {"trained": self.trained_people, "holdout": self.holdout_people}
        for s in FORGET_FRACTIONS:
            try:
                splits[s] = self.forget_people(s)
            except ValueError:
                pass
        parts = {
            "people.jsonl": [{k: v for k, v in p.items()} for p in self.people],
            "facts.jsonl": self.fact_rows(),
            "topics.jsonl": self.topics,
            "topic_questions.jsonl": self.topic_rows(),
            "general_text.jsonl": [{"text": t, "part": "train"} for t in self.general_train]
                                  + [{"text": t, "part": "eval"} for t in self.general_eval],
            "splits.jsonl": [{"split": k, "people": v} for k, v in splits.items()],
        }
        paths = []
        meta = folder / "world.json"
        meta.write_text(json.dumps({"seed": self.seed, "n_people": self.n_people, "n_holdout": self.n_holdout,
                                    "n_topics": len(self.topics)}, indent=2) + "\n")
        paths.append(meta)
        for name, rows in parts.items():
            path = folder / name
            tmp = path.with_suffix(".tmp")
            with open(tmp, "w") as f:
                for r in rows:
                    f.write(json.dumps(r, sort_keys=True) + "\n")
            os.replace(tmp, path)
            paths.append(path)
        return paths


def _make_names(rng: random.Random, n: int) -> list[str]:
    """n distinct two-part fictional names (unique first names, shared surnames)."""
    def word():
        s = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.choice([1, 2])))
        return (s + rng.choice(_CODAS)).capitalize()

    firsts: list[str] = []
    seen = set(w.lower() for w in CITIES)
    while len(firsts) < n:
        w = word()
        if len(w) >= 4 and w.lower() not in seen:
            seen.add(w.lower())
            firsts.append(w)
    surnames: list[str] = []
    while len(surnames) < max(8, n // 6):
        w = word()
        if len(w) >= 4 and w.lower() not in seen:
            seen.add(w.lower())
            surnames.append(w)
    return [f"{f} {rng.choice(surnames)}" for f in firsts]


def make_world(seed: int = 0, n_people: int = 200, n_holdout: int | None = None, n_topics: int | None = None) -> World:
    """Generate the world deterministically from ``(seed, n_people)``.

    n_people: trained people (the forget splits are 1/5/10 % of them); n_holdout: extra people never
    trained on (default: n_people // 5); n_topics: how many topics to use (default all 22).
    """
    if n_people < 2:
        raise ValueError(f"n_people must be at least 2, got {n_people}.")
    n_holdout = max(1, n_people // 5) if n_holdout is None else n_holdout
    rng = random.Random(seed)
    names = _make_names(rng, n_people + n_holdout)
    codes_seen: set[str] = set()
    people = []
    for i, name in enumerate(names):
        p = {"name": name, "holdout": i >= n_people}
        for attr, values in SHARED_VALUES.items():
            p[attr] = rng.choice(values)
        p["birth_year"] = str(rng.randint(1890, 1999))
        while True:
            code = (rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") + rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ")
                    + str(rng.randint(10, 99)))
            if code not in codes_seen:
                codes_seen.add(code)
                break
        p["code"] = code
        # three wrong answers per attribute, for the truth ratio (true vs perturbed answers)
        p["perturbed"] = {}
        for attr, values in SHARED_VALUES.items():
            p["perturbed"][attr] = rng.sample([v for v in values if v != p[attr]], 3)
        p["perturbed"]["birth_year"] = [str(y) for y in rng.sample(
            [y for y in range(1890, 2000) if str(y) != p["birth_year"]], 3)]
        # one phrasing per attribute is held out of training for this person
        p["heldout_phrasing"] = {a: rng.randrange(len(TEMPLATES[a])) for a in ATTRIBUTES}
        # relearning split: about half of each person's attributes are T, the rest V
        order = ATTRIBUTES[:]
        rng.shuffle(order)
        p["tv"] = {a: ("T" if j < len(order) // 2 else "V") for j, a in enumerate(order)}
        people.append(p)
    all_codes = sorted(codes_seen)
    for p in people:  # wrong codes are other people's codes
        p["perturbed"]["code"] = rng.sample([c for c in all_codes if c != p["code"]], 3)
    topic_names = list(TOPICS)[: (len(TOPICS) if n_topics is None else n_topics)]
    topics = []
    for t in topic_names:
        words = TOPICS[t]
        sentences = []
        for tpl in TOPIC_SENTENCES:
            for _ in range(3):
                a, b, c = rng.sample(words, 3)
                sentences.append(tpl.format(topic=t, a=a, b=b, c=c))
        topics.append({"name": t, "words": words, "sentences": sorted(set(sentences))})
    general = _general_sentences(rng)
    n_eval = max(4, len(general) // 5)
    return World(seed=seed, n_people=n_people, n_holdout=n_holdout, people=people, topics=topics,
                 general_train=general[n_eval:], general_eval=general[:n_eval])


def load_world_jsonl(folder: str | os.PathLike) -> World:
    """Read a world written by :meth:`World.to_jsonl` (e.g. the shipped ``data/world``)."""
    folder = Path(folder)
    missing = [n for n in ("people.jsonl", "topics.jsonl", "general_text.jsonl") if not (folder / n).exists()]
    if missing:
        raise FileNotFoundError(f"{folder} is missing {missing}; write a world with World.to_jsonl(folder) "
                                f"or run `python -m unlearn_utils.world {folder}`.")

    def read(name):
        with open(folder / name) as f:
            return [json.loads(line) for line in f if line.strip()]

    people = read("people.jsonl")
    general = read("general_text.jsonl")
    meta = {}
    if (folder / "world.json").exists():
        meta = json.loads((folder / "world.json").read_text())
    return World(seed=meta.get("seed", -1), n_people=sum(not p["holdout"] for p in people),
                 n_holdout=sum(p["holdout"] for p in people), people=people, topics=read("topics.jsonl"),
                 general_train=[g["text"] for g in general if g["part"] == "train"],
                 general_eval=[g["text"] for g in general if g["part"] == "eval"])


if __name__ == "__main__":  # python -m unlearn_utils.world data/world
    import sys

    out = sys.argv[1] if len(sys.argv) > 1 else "data/world"
    for path in make_world().to_jsonl(out):
        print("wrote", path)


def check_splits(**splits) -> None:
    """Refuse empty or overlapping splits, naming the problem: ``check_splits(forget=f, retain=r)``.

    Two splits overlap when they share a text (prompt + answer), or a person when rows name people.
    """
    names = list(splits)
    for name, data in splits.items():
        if data is None or len(data) == 0:
            raise ValueError(f"The {name} split is empty. Pass at least one example (e.g. world.facts('forget05')).")
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            da, db = splits[a], splits[b]
            if "person" in _columns(da) and "person" in _columns(db):
                shared = set(_column(da, "person")) & set(_column(db, "person"))
                if shared:
                    raise ValueError(f"The {a} and {b} splits overlap: {len(shared)} people are in both "
                                     f"(e.g. {sorted(shared)[0]!r}). Remove them from one split.")
            ka, kb = _texts(da), _texts(db)
            shared = ka & kb
            if shared:
                raise ValueError(f"The {a} and {b} splits overlap: {len(shared)} examples are in both "
                                 f"(e.g. {sorted(shared)[0]!r}). Remove them from one split.")


def _columns(data) -> list[str]:
    if hasattr(data, "column_names"):
        return list(data.column_names)
    first = data[0] if isinstance(data, list) else None
    return list(first) if isinstance(first, dict) else []


def _column(data, col):
    return [r[col] for r in data] if isinstance(data, list) else list(data[col])


def _texts(data) -> set[str]:
    rows = data if isinstance(data, list) else (data.to_list() if hasattr(data, "to_list") else list(data))
    out = set()
    for r in rows:
        if isinstance(r, str):
            out.add(r)
        elif "prompt" in r:
            out.add(r["prompt"] + " " + str(r.get("answer", "")))
        elif "text" in r:
            out.add(r["text"])
    return out
