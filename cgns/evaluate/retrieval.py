"""Retrieval on MIMIC-CXR: class-level precision@K on the 5xN test studies (MedCLIP's MIMIC-5x200) and the
exact-pair R@K of held-out image/report pairs (the figure pretraining reports, cgns.eval.retrieval)."""
from __future__ import annotations

from pathlib import Path

import torch

from cgns.data.sources import Issues, get_source
from cgns.data.sources.chexpert import CLASS_NAMES
from cgns.eval.retrieval import KS, chance_recall, precision_at_k, recall_at_k
from cgns.evaluate.images import encode_files
from cgns.evaluate.selection import mimic_5xn


def report_of(record: dict) -> str:
    """The record's kept sentences as one text, each ended by a period (split again the pretraining way)."""
    return " ".join(f"{s}." for s in record["sentences"])


def _named(per_class: dict) -> dict:
    return {CLASS_NAMES[c]: entry for c, entry in per_class.items()}


def exact_pairs(model, root: Path, records: list[dict], split: str) -> dict:
    """R@K both ways over every PA/AP image of `split` paired with its study's report (recall_at_k)."""
    chosen = [r for r in records if r["split"] == split]
    if not chosen:
        return {"num_pairs": 0}
    image = encode_files(model, [root / r["path"] for r in chosen])
    text = model.encode_texts([report_of(r) for r in chosen]).float()
    out = recall_at_k(image, text)
    out["num_pairs"] = len(chosen)
    out["chance"] = chance_recall(len(chosen))
    return out


def evaluate_retrieval(model, root: Path, output_dir: Path, *, split_file: Path | None = None,
                       n_per_class: int | None = None, log=print) -> dict:
    """{"test": {"image_to_text": {P@K, per_class}, "text_to_image": ..., "n_per_class", "split_file"},
    "exact_pairs": {"test": R@K, "valid": R@K}}."""
    records = get_source("mimic_cxr").read_records(root, Issues())
    split_file = split_file or output_dir / "mimic_5x200.csv"
    items = mimic_5xn(records, root, split_file, n_per_class, log=log)
    labels = torch.tensor([c for _, c in items])
    image = encode_files(model, [root / r["path"] for r, _ in items])
    text = model.encode_texts([report_of(r) for r, _ in items]).float()
    i2t = precision_at_k(image, text, labels, labels)
    t2i = precision_at_k(text, image, labels, labels)
    result = {"test": {"image_to_text": {**{k: v for k, v in i2t.items() if k != "per_class"},
                                         "per_class": _named(i2t["per_class"])},
                       "text_to_image": {**{k: v for k, v in t2i.items() if k != "per_class"},
                                         "per_class": _named(t2i["per_class"])},
                       "chance": 1.0 / len(CLASS_NAMES), "n_per_class": len(items) // len(CLASS_NAMES),
                       "split_file": str(split_file)},
                  "exact_pairs": {split: exact_pairs(model, root, records, split) for split in ("test", "valid")}}
    log(f"mimic_cxr 5x{result['test']['n_per_class']} retrieval: image->text "
        + " ".join(f"P@{k} {i2t[f'P@{k}']:.3f}" for k in KS) + "; text->image "
        + " ".join(f"P@{k} {t2i[f'P@{k}']:.3f}" for k in KS) + " (chance 0.200)")
    for split, pairs in result["exact_pairs"].items():
        if pairs.get("num_pairs"):
            log(f"exact pairs ({split}, {pairs['num_pairs']}): "
                + " ".join(f"i2t R@{k} {pairs[f'i2t_R@{k}']:.3f}" for k in KS) + "; "
                + " ".join(f"t2i R@{k} {pairs[f't2i_R@{k}']:.3f}" for k in KS))
    return result
