"""Zero-shot classification by prompts: CheXpert 5xN (5 classes) and each CheXpert label, RSNA pneumonia and the
three COVIDx classes.

Multi-class: each class is the averaged embedding of its sampled prompts; an image goes to the class of highest
cosine similarity. Binary (CheXzero): P(positive) = softmax over (similarity to the positive set, similarity to
the negative set), positive when > 0.5.
"""
from __future__ import annotations

from pathlib import Path

import torch

from cgns.data.sources import Issues, get_source
from cgns.data.sources.chexpert import CLASS_NAMES
from cgns.eval.metrics import binary_summary, multiclass_summary
from cgns.evaluate.images import encode_files
from cgns.evaluate.prompts import DEFAULT_NUM_PROMPTS, PROMPT_SEED, class_embeddings, known_words, load_prompts
from cgns.evaluate.selection import chexpert_5xn

DATASETS = ("chexpert", "rsna", "covidx")


def binary_probability(image_emb: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """CheXzero's softmax: exp(i.p) / (exp(i.p) + exp(i.n)) per image. image_emb [N, D]; positive, negative [D]
    (L2-normalised). Returns [N] in (0, 1)."""
    logits = torch.stack([image_emb @ positive, image_emb @ negative], dim=1)  # [N, 2]
    return torch.softmax(logits.double(), dim=1)[:, 0].float()


def binary_task(model, image_emb: torch.Tensor, labels, name: str, prompts: dict, n_prompts: int, seed: int,
                vocabulary=None) -> dict:
    """One label scored by positive against negative prompts -> binary_summary plus the prompts used."""
    pos, pos_used = class_embeddings(model, prompts, [name], n_prompts, seed, vocabulary=vocabulary)
    neg, neg_used = class_embeddings(model, prompts, [name], n_prompts, seed, "negative", vocabulary)
    probability = binary_probability(image_emb, pos[0], neg[0])
    return {**binary_summary(probability, labels), "prompts": {"positive": pos_used[name],
                                                               "negative": neg_used[name]}}


def multiclass_task(model, image_emb: torch.Tensor, labels, names: list[str], prompt_names: list[str],
                    prompts: dict, n_prompts: int, seed: int, vocabulary=None) -> dict:
    """Arg-max over the classes' prompt embeddings -> multiclass_summary plus the prompts used."""
    classes, used = class_embeddings(model, prompts, prompt_names, n_prompts, seed, vocabulary=vocabulary)
    scores = image_emb @ classes.T  # [N, C]
    summary = multiclass_summary(scores, labels, names)
    return {**summary, "n": int(len(labels)), "prompts": {n: used[p] for n, p in zip(names, prompt_names)}}


def _test_records(dataset: str, root: Path) -> list[dict]:
    source = get_source(dataset)
    records = source.read_records(root, Issues())
    if dataset == "rsna":
        return [records[i] for i in source.make_splits(records)["test"]]
    return [r for r in records if r.get("official") == "test"]


def evaluate_zeroshot(model, dataset: str, root: Path, output_dir: Path, *, split_file: Path | None = None,
                      n_per_class: int | None = None, n_prompts: int = DEFAULT_NUM_PROMPTS, seed: int = PROMPT_SEED,
                      prompt_file=None, prompt_words: str = "known", log=print) -> dict:
    """metrics.json's content for one data set (see the module docstring); root: the data set's folder.
    prompt_words 'known': prompts restricted to the tokenizer's whole words (prompts.sample_prompts)."""
    if dataset not in DATASETS:
        raise ValueError(f"zero-shot: unknown dataset {dataset!r} (expected one of {', '.join(DATASETS)})")
    prompts = load_prompts(prompt_file) if prompt_file else load_prompts()
    task = prompts["tasks"][dataset]
    vocabulary = known_words(model) if prompt_words == "known" else None
    options = {"prompts": prompts, "n_prompts": n_prompts, "seed": seed, "vocabulary": vocabulary}
    if dataset == "chexpert":
        from cgns.data.sources.chexpert import _layout

        split_file = split_file or output_dir / "chexpert_5x200.csv"
        items = chexpert_5xn(root, split_file, n_per_class, log=log)
        base, _ = _layout(root)
        image_emb = encode_files(model, [base / p for p, _ in items])
        labels = torch.tensor([c for _, c in items])
        five = multiclass_task(model, image_emb, labels, list(CLASS_NAMES), task, **options)
        five["split_file"] = str(split_file)
        five["n_per_class"] = len(items) // len(CLASS_NAMES)
        records = _test_records("chexpert", root)
        test_emb = encode_files(model, [root / r["path"] for r in records])
        test_labels = torch.tensor([r["label"] for r in records])  # [N, 5] under the uncertainty policy
        binary = {name: binary_task(model, test_emb, test_labels[:, c], name, **options)
                  for c, name in enumerate(CLASS_NAMES)}
        aurocs = [b["auroc"] for b in binary.values() if b["auroc"] is not None]
        log(f"chexpert 5x{five['n_per_class']} zero-shot accuracy {five['accuracy']:.4f} macro F1 "
            f"{five['macro_f1']:.4f}; per-label binary AUROC (official test, {len(records)} images) "
            + ", ".join(f"{n} {b['auroc']:.3f}" if b["auroc"] is not None else f"{n} n/a" for n, b in binary.items()))
        return {"test": five, "binary": {"split": "official test (valid.csv)", "per_label": binary,
                                         "macro_auroc": sum(aurocs) / len(aurocs) if aurocs else None}}
    records = _test_records(dataset, root)
    image_emb = encode_files(model, [root / r["path"] for r in records])
    if dataset == "rsna":
        labels = torch.tensor([int(r["label"][0]) for r in records])
        result = binary_task(model, image_emb, labels, task[0], **options)
        log(f"rsna zero-shot ({len(records)} test images): AUROC {result['auroc']:.4f} accuracy "
            f"{result['accuracy']:.4f} F1 {result['f1']:.4f}")
        return {"test": result}
    names = list(task)
    labels = torch.tensor([r["label"] for r in records])
    result = multiclass_task(model, image_emb, labels, names, [task[n] for n in names], **options)
    log(f"covidx zero-shot ({len(records)} test images): accuracy {result['accuracy']:.4f} macro F1 "
        f"{result['macro_f1']:.4f}")
    return {"test": result}
