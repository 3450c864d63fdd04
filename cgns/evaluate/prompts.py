"""The prompt sets of zero-shot classification (prompts.json) and the class embeddings made from them."""
from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

PROMPT_FILE = Path(__file__).with_name("prompts.json")
SLOTS = ("severity", "subtype", "location")
DEFAULT_NUM_PROMPTS = 10
PROMPT_SEED = 0


def load_prompts(path: str | Path = PROMPT_FILE) -> dict:
    """The prompt file as a dict; ValueError naming the file and the entry that is malformed."""
    path = Path(path)
    try:
        prompts = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read the prompt file ({error})") from None
    for section in ("classes", "negative", "tasks"):
        if not isinstance(prompts.get(section), dict):
            raise ValueError(f"{path}: missing section {section!r}")
    for name, value in {**prompts["classes"], **{f"negative/{k}": v for k, v in prompts["negative"].items()}}.items():
        if not expand(value, f"{path}: {name}"):
            raise ValueError(f"{path}: prompt set {name!r} is empty")
    return prompts


def expand(prompt_set, where: str = "prompt set") -> list[str]:
    """Every sentence of a set: the list itself, or each 'severity subtype location' combination (blank slots
    dropped, single spaces)."""
    if isinstance(prompt_set, list) and all(isinstance(s, str) for s in prompt_set):
        return [" ".join(s.split()) for s in prompt_set if s.strip()]
    if isinstance(prompt_set, dict):
        missing = [slot for slot in SLOTS if not isinstance(prompt_set.get(slot), list)]
        if missing:
            raise ValueError(f"{where}: missing word list(s) {', '.join(missing)}")
        combos = itertools.product(*(prompt_set[slot] for slot in SLOTS))
        return sorted({" ".join(" ".join(words).split()) for words in combos} - {""})
    raise ValueError(f"{where}: a prompt set is a list of sentences or a dict of {', '.join(SLOTS)} word lists")


def known_words(model) -> set[str] | None:
    """The whole words of the model's tokenizer vocabulary (no '##' pieces, no [SPECIAL] tokens); None when the
    model exposes no tokenizer."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None or not hasattr(tokenizer, "get_vocab"):
        return None
    return {w for w in tokenizer.get_vocab() if not w.startswith("##") and not w.startswith("[")}


def words_of(sentence: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", sentence.lower())


def sample_prompts(prompt_set, n: int = DEFAULT_NUM_PROMPTS, seed: int = PROMPT_SEED, key: str = "",
                   vocabulary: set[str] | None = None) -> list[str]:
    """n sentences of the set drawn without replacement with a generator seeded by (seed, key); all when fewer.
    vocabulary: keep only the sentences made of these words first (the whole set when none is)."""
    sentences = expand(prompt_set, key or "prompt set")
    if vocabulary is not None:
        sentences = [s for s in sentences if all(w in vocabulary for w in words_of(s))] or sentences
    if len(sentences) <= n:
        return sentences
    rng = np.random.default_rng([seed, *key.encode()])
    return [sentences[i] for i in sorted(rng.choice(len(sentences), n, replace=False))]


def set_embedding(model, sentences: list[str]) -> torch.Tensor:
    """[D] L2-normalised mean of the sentences' L2-normalised text embeddings."""
    return F.normalize(model.encode_texts(sentences).float().mean(dim=0), dim=0)


def class_embeddings(model, prompts: dict, names: list[str], n: int = DEFAULT_NUM_PROMPTS,
                     seed: int = PROMPT_SEED, section: str = "classes",
                     vocabulary: set[str] | None = None) -> tuple[torch.Tensor, dict]:
    """([C, D] one embedding per class, {name: the sentences used}); vocabulary: see sample_prompts."""
    used = {}
    for name in names:
        if name not in prompts[section]:
            raise ValueError(f"no prompt set for {name!r} in section {section!r} of the prompt file")
        used[name] = sample_prompts(prompts[section][name], n, seed, f"{section}/{name}", vocabulary)
    return torch.stack([set_embedding(model, used[name]) for name in names]), used
