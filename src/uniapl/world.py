"""The embedded instruction-following world: prompts with real IFEval instructions, two writers.

Every prompt is a task about a topic plus 1-3 instructions whose text comes from the IFEval checkers'
own ``build_description`` (lm-evaluation-harness), so the same checker code grades every response.

Two seeded, deterministic writers produce the pretraining corpora:

* the **expert writer** (teacher style): 2-3 plain sentences, no filler, and it satisfies every
  instruction (each response is verified with the real checkers; failures are rewritten);
* the **student writer** (base-student style): the same sentence bank, hedged ("Well, ...", "..., I
  think.") and longer (3-4 sentences, a filler line half the time), and it follows each instruction only
  with probability ``follow_prob`` (like a small instruction-tuned model of the expert's family).

Splits: ``train``; ``validation`` (unseen in-distribution prompts for every choice: selection, plateau);
``in_domain`` (unseen prompts, seen types, combinations and kwarg ranges);
``ood`` (IFBench-like: more instructions per prompt, held-out type pairs, unseen kwarg values,
unseen topics; each row tagged with its ``ood_axis``).
"""

from __future__ import annotations

import itertools
import random

from uniapl.config import WorldConfig
from uniapl.instructions import (BULLETS, END, FORBID, HIGHLIGHT, INSTRUCTION_TYPES, JSON, KEYWORD, LOWER,  # noqa: F401
                                 NO_COMMA, PARAS, PS, QUOTE, TITLE, WORDS)

# `uniapl.ifeval` (lm-evaluation-harness + nltk, ~4 s to import) is imported inside the two functions that
# need it: stages that never check a response (pretrain) should not pay for the checkers.

# Pairs that cannot both hold, or that our writer cannot realise together (JSON swallows all layout).
_LAYOUT = {TITLE, PS, QUOTE, BULLETS, HIGHLIGHT, PARAS, END, LOWER}
INCOMPATIBLE = {frozenset((JSON, t)) for t in _LAYOUT} | {
    frozenset((QUOTE, END)), frozenset((QUOTE, PS)), frozenset((BULLETS, PARAS)),
    frozenset((WORDS, BULLETS)), frozenset((WORDS, PARAS)), frozenset((HIGHLIGHT, BULLETS)),
}
# Type pairs never shown together in train / in_domain; OOD tests them ("unseen combinations").
HELDOUT_PAIRS = {frozenset((TITLE, BULLETS)), frozenset((NO_COMMA, PS)), frozenset((LOWER, HIGHLIGHT))}

END_PHRASES = ("Is there anything else I can help with?", "Let me know if you have additional questions.",
               "Any other questions?")
KEYWORDS = ("river", "music", "garden", "winter", "market", "bridge", "engine", "forest")
# Words both writers use often, each with a substitute the expert uses when a word is forbidden.
FORBIDDABLE = {"good": "fine", "very": "quite", "really": "truly", "people": "folks", "think": "feel",
               "many": "lots of", "important": "key", "thing": "item"}

TRAIN_TOPICS = ("cats", "rain", "bread", "trains", "the sea", "coffee", "chess", "bicycles", "tea",
                "mountains", "libraries", "snow", "gardens", "bees", "clocks", "maps", "music",
                "soup", "boats", "the moon", "birds", "candles", "rivers", "apples", "kites",
                "deserts", "painting", "stars", "forests", "bridges", "cheese", "letters", "owls",
                "islands", "markets", "lamps", "dogs", "shoes", "summer", "pianos")
OOD_TOPICS = ("volcanoes", "robots", "honey", "tigers", "castles", "umbrellas", "rockets", "whales",
              "mirrors", "dragons")
TASKS = ("Write a short note about {topic}.", "Describe {topic}.", "Tell me about {topic}.",
         "Write a few lines on {topic}.", "Explain why {topic} matter.")


def _sample_kwargs(rng: random.Random, itype: str, ood: bool) -> dict:
    """Kwargs for one instruction; ``ood`` draws values never used in training."""
    if itype == END:
        return {"end_phrase": rng.choice(END_PHRASES)}
    if itype == PS:
        return {"postscript_marker": rng.choice(("P.S.", "P.P.S"))}
    if itype == BULLETS:
        return {"num_bullets": rng.choice((5,) if ood else (1, 2, 3, 4))}
    if itype == HIGHLIGHT:
        return {"num_highlights": rng.choice((3,) if ood else (1, 2))}
    if itype == PARAS:
        return {"num_paragraphs": rng.choice((4,) if ood else (2, 3))}
    if itype == WORDS:
        if ood:
            return rng.choice(({"relation": "less than", "num_words": 25},
                               {"relation": "at least", "num_words": 45}))
        return rng.choice(({"relation": "less than", "num_words": 20},
                           {"relation": "less than", "num_words": 35},
                           {"relation": "at least", "num_words": 40},
                           {"relation": "at least", "num_words": 60}))
    if itype == FORBID:
        return {"forbidden_words": sorted(rng.sample(sorted(FORBIDDABLE), 2))}
    if itype == KEYWORD:
        return {"keywords": [rng.choice(KEYWORDS)]}
    return {}


def _compatible(types: tuple[str, ...], allow_heldout: bool) -> bool:
    for a, b in itertools.combinations(types, 2):
        pair = frozenset((a, b))
        if pair in INCOMPATIBLE or (not allow_heldout and pair in HELDOUT_PAIRS):
            return False
    return True


def make_prompt(rng: random.Random, types: tuple[str, ...], topic: str, ood_kwargs: set[str] = frozenset()) -> dict:
    """One IFEval-format row (``key``, ``prompt``, ``instruction_id_list``, ``kwargs``, ``topic``)."""
    from uniapl import ifeval
    kwargs = [_sample_kwargs(rng, t, t in ood_kwargs) for t in types]
    descriptions = [ifeval.build_instruction(t, kw)[1] for t, kw in zip(types, kwargs)]
    task = rng.choice(TASKS).format(topic=topic)
    return {"prompt": " ".join([task, *descriptions]), "instruction_id_list": list(types),
            "kwargs": kwargs, "topic": topic}


def _draw_types(rng: random.Random, k: int, weights: dict[str, float], allow_heldout: bool,
                must_pair: frozenset | None = None) -> tuple[str, ...]:
    names = list(weights)
    w = [weights[n] for n in names]
    for _ in range(1000):
        chosen = sorted(must_pair) if must_pair else []  # sorted: frozenset order follows the hash seed
        while len(chosen) < k:
            t = rng.choices(names, w)[0]
            if t not in chosen:
                chosen.append(t)
        types = tuple(chosen)
        if _compatible(types, allow_heldout):
            return types
    raise RuntimeError(f"cannot draw {k} compatible instructions from {names}")


def build_splits(cfg: WorldConfig) -> dict[str, list[dict]]:
    """Deterministic prompts for ``train``, ``in_domain``, ``validation`` and ``ood`` (no prompt text repeats)."""
    rng = random.Random(cfg.seed)
    seen: set[str] = set()
    ks = list(range(1, len(cfg.n_instructions_probs) + 1))

    def fresh(make) -> dict:
        for _ in range(1000):
            row = make()
            if row["prompt"] not in seen:
                seen.add(row["prompt"])
                return row
        raise RuntimeError("the world is too small for the requested number of distinct prompts")

    def in_dist() -> dict:
        k = rng.choices(ks, cfg.n_instructions_probs)[0]
        return make_prompt(rng, _draw_types(rng, k, cfg.type_weights, False), rng.choice(TRAIN_TOPICS))

    splits: dict[str, list[dict]] = {"train": [fresh(in_dist) for _ in range(cfg.n_train)],
                                     "in_domain": [fresh(in_dist) for _ in range(cfg.n_in_domain)]}
    # drawn after in_domain so that adding it leaves train and in_domain as they were
    splits["validation"] = [fresh(in_dist) for _ in range(cfg.n_validation)]
    axes = ("more_instructions", "unseen_combination", "unseen_kwargs", "unseen_topic")
    ood = []
    for i in range(cfg.n_ood):
        axis = axes[i % len(axes)]

        def one(axis=axis) -> dict:
            topic = rng.choice(OOD_TOPICS if axis == "unseen_topic" else TRAIN_TOPICS)
            if axis == "more_instructions":
                types = _draw_types(rng, cfg.ood_n_instructions, cfg.type_weights, False)
                return make_prompt(rng, types, topic)
            if axis == "unseen_combination":
                pair = rng.choice(sorted(HELDOUT_PAIRS, key=sorted))
                types = _draw_types(rng, rng.choice((2, 3)), cfg.type_weights, True, pair)
                return make_prompt(rng, types, topic)
            if axis == "unseen_kwargs":
                target = rng.choice((BULLETS, HIGHLIGHT, PARAS, WORDS))
                types = _draw_types(rng, rng.choice((1, 2)), cfg.type_weights, False,
                                    frozenset((target,)))
                return make_prompt(rng, types, topic, ood_kwargs={target})
            k = rng.choices(ks, cfg.n_instructions_probs)[0]
            return make_prompt(rng, _draw_types(rng, k, cfg.type_weights, False), topic)

        row = fresh(one)
        row["ood_axis"] = axis
        ood.append(row)
    splits["ood"] = ood
    for name, rows in splits.items():
        for j, row in enumerate(rows):
            row["key"] = f"{name}-{j}"
    return splits


# --- the writers ---------------------------------------------------------------------------------

# One sentence bank for both writers [ours]: the base student and the expert share vocabulary and phrasing, as a
# 0.6B and a 235B model of one family do, so imitation refines an answer instead of replacing every sentence.
_SENTENCES = (
    "{T} are simple to enjoy.", "I like {t} a lot.", "{T} can make a day better.",
    "Many people think {t} are good.", "There is always more to learn about {t}.",
    "{T} are an important thing in daily life.", "A quiet hour with {t} is good.",
    "{T} bring calm and joy.", "You can read about {t} in any library.", "Most days {t} feel new.",
    "{T} have a long history.", "Some people say {t} are boring.",
)
# The student's habits on top of the same bank: hedged openers and asides (comma-heavy), more sentences and a
# closing filler line, and instructions followed only with its follow_prob.
_HEDGES = ("Well, ", "Honestly, ", "In my view, ", "To be fair, ", "Of course, ")
_ASIDES = (", I think.", ", to be honest.", ", in many ways.", ", really.")
_FILLER = ("Anyway, that is about it.", "So, yes, that is my answer.", "Well, I hope this helps, in some way.")
_KEYWORD_SENTENCE = "I also think of the {kw}."
_PS_TEXT = "{m} Thanks for reading."


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _fill(template: str, topic: str) -> str:
    return template.format(t=topic, T=_cap(topic))


def _word_count(text: str) -> int:
    return len(__import__("re").findall(r"\w+", text))


def _render(row: dict, sentences: list[str], apply: set[str], style: str, rng: random.Random) -> str:
    """Lay out ``sentences`` and realise the instructions in ``apply`` in a fixed, compatible order."""
    kw = dict(zip(row["instruction_id_list"], row["kwargs"]))
    topic = row["topic"]
    if KEYWORD in apply:
        sentences.insert(rng.randrange(len(sentences) + 1), _KEYWORD_SENTENCE.format(kw=kw[KEYWORD]["keywords"][0]))
    if WORDS in apply:  # add or drop sentences until the word-count relation holds
        rel, n = kw[WORDS]["relation"], kw[WORDS]["num_words"]
        if rel == "at least":
            while _word_count(" ".join(sentences)) < n + 2:
                extra = _fill(rng.choice(_SENTENCES), topic)
                sentences.append(extra if style == "expert" else _hedge(extra, rng))
        else:
            while len(sentences) > 1 and _word_count(" ".join(sentences)) > n - 8:
                sentences.pop()
    if FORBID in apply:
        import re
        for w in kw[FORBID]["forbidden_words"]:
            sub = FORBIDDABLE[w]
            sentences = [re.sub(rf"\b{w}\b", sub, s) for s in sentences]
            sentences = [re.sub(rf"\b{_cap(w)}\b", _cap(sub), s) for s in sentences]
    # layout
    if BULLETS in apply:
        n = kw[BULLETS]["num_bullets"]
        while len(sentences) < n:
            sentences.append(_fill(rng.choice(_SENTENCES), topic))
        head, items = sentences[: max(0, len(sentences) - n)], sentences[-n:]
        body = ((" ".join(head) + "\n") if head else "") + "\n".join("* " + s for s in items)
    elif PARAS in apply:
        n = kw[PARAS]["num_paragraphs"]
        while len(sentences) < n:
            sentences.append(_fill(rng.choice(_SENTENCES), topic))
        chunks = [sentences[i::n] for i in range(n)]
        body = "\n***\n".join(" ".join(c) for c in chunks)
    else:
        body = " ".join(sentences)
    if HIGHLIGHT in apply:
        n = kw[HIGHLIGHT]["num_highlights"]
        # never the first word of a line: "*word* ..." at a line start would read as a bullet
        words = body.split(" ")
        idx = [i for i, w in enumerate(words) if i >= 2 and w.isalpha() and words[i - 1] != "*"
               and "\n" not in words[i - 1]][: n]
        for i in idx:
            words[i] = f"*{words[i]}*"
        body = " ".join(words)
    if TITLE in apply:
        body = f"<<{_cap(topic)}>>\n" + body
    if PS in apply:
        body += "\n" + _PS_TEXT.format(m=kw[PS]["postscript_marker"])
    if END in apply:
        body += " " + kw[END]["end_phrase"]
    if NO_COMMA in apply:
        body = body.replace(", ", " ").replace(",", "")
    if LOWER in apply:
        body = body.lower()
    if QUOTE in apply:  # quotes on their own lines keep a leading bullet a bullet
        body = f'"\n{body}\n"' if body.startswith("* ") else f'"{body}"'
    if JSON in apply:
        import json
        body = json.dumps({"text": body})  # one key: no comma, so no_comma can hold
    return body


def expert_response(row: dict, rng: random.Random) -> str:
    """The teacher-style answer: 2-3 short sentences, every instruction satisfied (verified)."""
    from uniapl import ifeval
    for _ in range(20):
        sentences = [_fill(s, row["topic"]) for s in rng.sample(_SENTENCES, rng.choice((2, 3)))]
        text = _render(row, sentences, set(row["instruction_id_list"]), "expert", rng)
        strict = ifeval.check_strict(row["prompt"], row["instruction_id_list"], row["kwargs"], text)
        if all(strict):
            return text
    return text  # rare: the best effort is kept; the pass rate is reported by the world stage


def _hedge(sentence: str, rng: random.Random) -> str:
    """A bank sentence in the student's voice: a hedged opener, an aside before the full stop, or both."""
    roll = rng.random()
    if roll < 0.45:
        sentence = rng.choice(_HEDGES) + sentence[:1].lower() + sentence[1:]
    if roll > 0.3:
        sentence = sentence[:-1] + rng.choice(_ASIDES)
    return sentence


def student_response(row: dict, rng: random.Random, follow_prob: float) -> str:
    """The base-student answer: the expert's sentence bank, hedged and longer (3-4 sentences, a filler line
    half the time), each instruction followed with probability ``follow_prob``."""
    apply = {t for t in row["instruction_id_list"] if rng.random() < follow_prob}
    sentences = [_hedge(_fill(s, row["topic"]), rng) for s in rng.sample(_SENTENCES, rng.choice((3, 4)))]
    if rng.random() < 0.5:
        sentences.append(rng.choice(_FILLER))
    return _render(row, sentences, apply, "student", rng)
