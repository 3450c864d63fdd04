"""Does a sentence's text-to-patch attention peak where the generator drew the finding it names?

The score of one sentence is the probability that its attention map's peak patch has its centre inside the
finding's box, ties broken uniformly at random (so a flat map scores the fraction of patch centres in the box,
i.e. about chance, instead of always picking the top-left patch). Chance = box area / image area.
"""
from __future__ import annotations

from typing import Iterable

import torch


def peak_in_box(attention: torch.Tensor, box, image_size: tuple[int, int] | int) -> float:
    """Probability in [0, 1] that the peak of `attention` lies inside `box`.

    attention: [h, w] map over the patch grid (any non-negative or signed scores; only the arg-max matters).
    box: (x1, y1, x2, y2) in pixels of the model input image of size image_size = (H, W) (or an int for square).
    """
    if attention.dim() != 2:
        raise ValueError(f"attention must be a [h, w] map over the patch grid, got shape {tuple(attention.shape)}")
    attention = attention.detach().float()
    # ties: every patch within float tolerance of the maximum counts as a peak
    peaks = attention >= attention.max() - 1e-6 * attention.abs().max().clamp_min(1e-12)
    inside = patches_in_box(attention.shape, box, image_size)
    return float((peaks & inside).sum()) / float(peaks.sum())


def patches_in_box(grid: tuple[int, int], box, image_size: tuple[int, int] | int) -> torch.Tensor:
    """bool [h, w]: which patches of an h x w grid over the image have their centre inside `box` (pixels)."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    grid_h, grid_w = grid
    centre_y = (torch.arange(grid_h, dtype=torch.float32) + 0.5) * (height / grid_h)  # [h] pixels
    centre_x = (torch.arange(grid_w, dtype=torch.float32) + 0.5) * (width / grid_w)  # [w] pixels
    x1, y1, x2, y2 = (float(v) for v in box)
    return ((centre_y >= y1) & (centre_y < y2))[:, None] & ((centre_x >= x1) & (centre_x < x2))[None, :]


def box_area_fraction(box, image_size: tuple[int, int] | int) -> float:
    """Area of `box` clipped to the image, divided by the image area: the chance that a random pixel falls in it."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    x1, y1, x2, y2 = (float(v) for v in box)
    clipped_w = max(0.0, min(x2, width) - max(x1, 0.0))
    clipped_h = max(0.0, min(y2, height) - max(y1, 0.0))
    return clipped_w * clipped_h / (width * height)


def localisation_score(samples: Iterable[tuple[torch.Tensor, tuple, tuple[int, int] | int, str]]) -> dict:
    """Aggregate peak-in-box over (attention [h, w], box, image_size, finding) samples.

    Returns {"n_sentences", "hit_rate", "chance_rate", "lift" (= hit / chance), "per_finding": {finding: {...}}}.
    """
    hits, chances, per_finding = [], [], {}
    for attention, box, image_size, finding in samples:
        hit, chance = peak_in_box(attention, box, image_size), box_area_fraction(box, image_size)
        hits.append(hit)
        chances.append(chance)
        entry = per_finding.setdefault(finding, {"n_sentences": 0, "hits": 0.0, "chance": 0.0})
        entry["n_sentences"] += 1
        entry["hits"] += hit
        entry["chance"] += chance
    result = {"n_sentences": len(hits), "hit_rate": float("nan"), "chance_rate": float("nan"),
              "lift": float("nan"), "per_finding": {}}
    if hits:
        result["hit_rate"] = sum(hits) / len(hits)
        result["chance_rate"] = sum(chances) / len(chances)
        result["lift"] = result["hit_rate"] / max(result["chance_rate"], 1e-12)
    for finding, entry in sorted(per_finding.items()):
        n = entry["n_sentences"]
        result["per_finding"][finding] = {"n_sentences": n, "hit_rate": entry["hits"] / n,
                                          "chance_rate": entry["chance"] / n}
    return result


def position_prior_hit_rate(samples) -> float:
    """localisation_score's hit rate when every sentence gets the SAME map: the mean of all the samples' maps
    (which must share one patch grid). It scores a fixed position prior, e.g. "the lower middle of the chest",
    where many findings lie; a model that beats chance but not this has learnt where findings tend to be, not
    where this one is. samples: as for localisation_score."""
    samples = list(samples)
    if not samples:
        return float("nan")
    prior = torch.stack([attention.detach().float() for attention, _, _, _ in samples]).mean(dim=0)  # [h, w]
    return localisation_score((prior, box, size, finding) for _, box, size, finding in samples)["hit_rate"]


def best_fixed_patch_hit_rate(samples) -> tuple[float, tuple[int, int] | None]:
    """The highest hit rate any image-blind map can reach: every sentence's map peaks on the same single patch,
    that patch chosen WITH the truth (an oracle). Returns (hit rate, (row, col) of that patch).

    Findings cluster (the heart, the bases), and on a coarse grid one well-placed patch lies inside many of their
    regions, so this can be far above chance; a map that grounds findings should beat it, not only chance.
    samples: as for localisation_score, on one shared patch grid."""
    samples = list(samples)
    if not samples:
        return float("nan"), None
    grid = tuple(samples[0][0].shape)
    hits = torch.zeros(grid)
    for _, box, image_size, _ in samples:
        hits += patches_in_box(grid, box, image_size)
    best = int(hits.flatten().argmax())
    return float(hits.flatten()[best]) / len(samples), divmod(best, grid[1])


def best_fixed_patch_per_finding(samples) -> tuple[float, dict]:
    """best_fixed_patch_hit_rate for each finding kind on its own: every sentence of a kind points at the one patch
    best for that kind (chosen with the truth). It knows WHAT the sentence names but neither reads the image nor the
    side the sentence gives. Returns (pooled hit rate over all samples, {finding: (hit rate, (row, col))})."""
    by_finding = {}
    for sample in samples:
        by_finding.setdefault(sample[3], []).append(sample)
    if not by_finding:
        return float("nan"), {}
    per_finding = {finding: best_fixed_patch_hit_rate(group) for finding, group in sorted(by_finding.items())}
    hits = sum(rate * len(by_finding[finding]) for finding, (rate, _) in per_finding.items())
    return hits / sum(len(group) for group in by_finding.values()), per_finding


def map_contrast(maps_per_image) -> dict:
    """How peaked the attention maps are, and how much they depend on the sentence.

    maps_per_image: per image, its sentences' maps [S, h, w] (non-negative weights, e.g. sigmoid).
    Returns the medians over all sentences of peak / mean and (max - min) / mean of a map, and over images with
    several sentences of mean |map - the image's mean map| / the image's mean weight ("sentence_difference").
    A flat map has peak / mean = 1: its arg-max, and any colour map stretched to its own range, is noise.
    """
    ratios, ranges, differences = [], [], []
    for maps in maps_per_image:
        flat = maps.detach().float().flatten(1)                                     # [S, h*w]
        if flat.numel() == 0:
            continue
        mean, peak = flat.mean(dim=1).clamp_min(1e-12), flat.max(dim=1).values
        ratios.append(peak / mean)
        ranges.append((peak - flat.min(dim=1).values) / mean)
        if flat.shape[0] > 1:
            differences.append(float((flat - flat.mean(dim=0)).abs().mean() / flat.mean().clamp_min(1e-12)))
    if not ratios:
        return {"peak_over_mean": float("nan"), "range_over_mean": float("nan"), "sentence_difference": float("nan")}
    return {"peak_over_mean": float(torch.cat(ratios).median()), "range_over_mean": float(torch.cat(ranges).median()),
            "sentence_difference": float(torch.tensor(differences).median()) if differences else float("nan")}


def attention_localisation(run_or_model, dataset=None, *, data_root=None, cache_size: int = 256,
                           device: str = "cpu", max_items: int | None = None, outputs=None,
                           checkpoint=None, attention_kind: str | None = None) -> dict:
    """Over the MIMIC-CXR validation set: how often a sentence naming a located finding has its text-to-patch
    attention peak inside the region where the generator drew that finding, against chance (area fraction).

    run_or_model: a run directory (model, data and cache size are read from it), or a CGNSModel together with
    `dataset` (a validation PretrainDataset) and `data_root` (the generated MIMIC-CXR folder with
    ground_truth.json). checkpoint: with a run directory, which checkpoint (default final.pt, else latest.pt, ...).
    outputs: a precomputed cgns.viz.inference.ValidationOutputs (saves a pass; its maps are the ones measured).
    attention_kind: 'cross' (losses 2-4's cross-attention) or 'grounding' (the grounding term's attention); default:
    the grounding term's when the run trained it, else the cross-attention. The result names it ("attention").
    Returns localisation_score(...) plus n_images, sentence_agnostic_hit_rate (the same measure on the mean
    map of the image's sentences), position_prior_hit_rate (on one map for every sentence: the mean of all the
    scored sentences' maps, i.e. where the model looks whatever the image), best_fixed_patch_hit_rate and
    best_fixed_patch (the best any image-blind map can do: one patch, chosen with the truth),
    best_fixed_patch_per_finding_hit_rate (one such patch per finding kind; per_finding holds each kind's),
    peak_on_image_rate (peaks on the X-ray rather than on its zero padding) and "contrast" (map_contrast over every
    sentence's map: are the maps peaked at all?); raises ValueError on data without ground truth.
    """
    from pathlib import Path

    from cgns.viz.inference import run_validation
    from cgns.viz.truth import box_in_model_input, load_truth, sentence_regions

    if isinstance(run_or_model, (str, Path)):
        from cgns.viz.loading import load_run

        loaded = load_run(run_or_model, device=device, data_root=data_root, checkpoint=checkpoint)
        model, dataset, data_root, cache_size = loaded.model, loaded.dataset, loaded.data_root, loaded.cache_size
    else:
        model = run_or_model
        if dataset is None or data_root is None:
            raise ValueError("attention_localisation(model, dataset, data_root=...): a model needs its validation "
                             "dataset and the data root holding ground_truth.json")
    truth = load_truth(data_root)
    if truth is None:
        raise ValueError(f"{data_root}: no ground_truth.json (only generated data records where findings are "
                         f"drawn, so the localisation measure needs the demo or a generated world)")
    if outputs is None:
        outputs = run_validation(model, dataset, device=device, max_items=max_items, attention_kind=attention_kind)
    elif attention_kind is not None and attention_kind != outputs.attention_kind:
        raise ValueError(f"the precomputed outputs hold {outputs.attention_kind!r} attention, not {attention_kind!r}")
    image_size = model.config.image_size
    samples, agnostic, on_image = [], [], []
    for position, index in enumerate(outputs.indices):
        maps = outputs.attention_maps[position]                                    # [S, h, w]
        record = dataset.record(index)
        regions = sentence_regions(record, truth, cache_size, image_size)
        # the X-ray itself (not the zero padding that squares it) in model-input pixels
        content = box_in_model_input((0, 0, record["width"], record["height"]), record, cache_size, image_size)
        for sentence, (box, finding) in enumerate(regions[:len(maps)]):
            if box is not None:
                samples.append((maps[sentence], box, image_size, finding))
                # baseline: the image's mean map over all its sentences, i.e. where the model looks whatever
                # the sentence says; beating chance but not this means image saliency, not grounding
                agnostic.append((maps.mean(dim=0), box, image_size, finding))
                on_image.append(peak_in_box(maps[sentence], content, image_size))
    result = localisation_score(samples)
    result["sentence_agnostic_hit_rate"] = localisation_score(agnostic)["hit_rate"]
    result["position_prior_hit_rate"] = position_prior_hit_rate(samples)
    result["best_fixed_patch_hit_rate"], result["best_fixed_patch"] = best_fixed_patch_hit_rate(samples)
    result["best_fixed_patch_per_finding_hit_rate"], per_kind = best_fixed_patch_per_finding(samples)
    for finding, (rate, patch) in per_kind.items():
        result["per_finding"][finding].update(best_fixed_patch_hit_rate=rate, best_fixed_patch=patch)
    # diagnostic: a map that peaks on the padding never localises anything
    result["peak_on_image_rate"] = sum(on_image) / len(on_image) if on_image else float("nan")
    result["n_images"] = len(outputs.indices)
    result["attention"] = outputs.attention_kind
    result["contrast"] = map_contrast(outputs.attention_maps)
    return result
