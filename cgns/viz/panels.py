"""The report sections that need the trained model: attention per sentence (and the localisation figure), CM-MIR
reconstructions, retrieval examples, and what the CGNS clusters hold."""
from __future__ import annotations

import contextlib
import json
import sys
from collections import Counter
from pathlib import Path

import torch

from cgns.viz.examples import draw_attention, draw_reconstructions, save_thumbnail
from cgns.viz.html import Figure, Row, Section, Table
from cgns.viz.inference import collate_items, run_validation
from cgns.viz.localisation import attention_localisation
from cgns.viz.truth import load_truth, match_sentences, sentence_label, sentence_regions

MAX_VALIDATION_ITEMS = 512   # cap of the one inference pass (real validation sets are large)


def _spread(count: int, wanted: int) -> list[int]:
    """`wanted` positions spread evenly over range(count)."""
    if count <= wanted:
        return list(range(count))
    return [round(i * (count - 1) / (wanted - 1)) if wanted > 1 else 0 for i in range(wanted)]


def _report_text(record: dict, limit: int = 160) -> str:
    text = ". ".join(record["sentences"]) + "."
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ------------------------------------------------------------------------------------------------ attention
ATTENTION_WORDING = {
    "cross": "the cross-attention of losses 2-4: the sentence's weights over the patches as it queries them",
    "grounding": "the grounding term's softmax of t1 cos(sentence, patch) over the patches; the run trained it",
}


def attention_sections(loaded, outputs, truth, out_dir: Path, num_images: int) -> list[Section]:
    dataset, image_size = loaded.dataset, loaded.model.config.image_size
    which = ATTENTION_WORDING[outputs.attention_kind]
    section = Section("Cross-modal attention per sentence",
                      note=f"Each sentence's attention over the image patches ({which}; jet colours, red = high). "
                           "White square: the peak patch. Green box: where the generator drew the finding the "
                           "sentence names (generated data only).")
    regions_of = {}
    for position, index in enumerate(outputs.indices):
        record = dataset.record(index)
        regions_of[position] = (sentence_regions(record, truth, loaded.cache_size, image_size) if truth
                                else [(None, None)] * len(record["sentences"]))
    located = [p for p in regions_of if any(box is not None for box, _ in regions_of[p])]
    chosen = (located or list(regions_of))[:num_images]
    examples = []
    for position in chosen:
        index = outputs.indices[position]
        record, maps = dataset.record(index), outputs.attention_maps[position]
        examples.append({"image": dataset[index]["image"], "index": index,
                         "sentences": record["sentences"][:len(maps)], "maps": list(maps),
                         "boxes": [box for box, _ in regions_of[position][:len(maps)]]})
    if examples:
        section.items.append(Figure(draw_attention(examples, out_dir / "attention.png"),
                                    "validation images, one column per report sentence"))
    sections = [section]
    if truth is not None:
        sections.append(localisation_section(loaded, outputs, out_dir))
    return sections


# Below this median peak / mean the report warns that the attention maps are flat (their arg-max is noise).
FLAT_PEAK_OVER_MEAN = 1.1


def localisation_section(loaded, outputs, out_dir: Path) -> Section:
    result = attention_localisation(loaded.model, loaded.dataset, data_root=loaded.data_root,
                                    cache_size=loaded.cache_size, outputs=outputs)
    section = Section("Does attention find the finding?",
                      note="Over the validation set: for each sentence naming a finding the generator drew "
                           "(negations and normal statements excluded), does its attention map peak inside that "
                           "finding's region? Chance = region area / image area.")
    if result["n_sentences"] == 0:
        section.error = "no validation sentence names a located finding"
        return section
    (out_dir / "localisation.json").write_text(json.dumps(result, indent=2))
    section.items.append(f"Measured on {ATTENTION_WORDING[result['attention']]}.")
    section.items.append(f"Peak inside the region for {result['hit_rate']:.1%} of {result['n_sentences']} "
                         f"sentences ({result['n_images']} images), against {result['chance_rate']:.1%} by chance "
                         f"(lift x{result['lift']:.2f}). Baselines: the mean map of the image's sentences "
                         f"(whatever the sentence says) {result['sentence_agnostic_hit_rate']:.1%}; the model's "
                         f"mean map over all sentences (whatever the image) {result['position_prior_hit_rate']:.1%}; "
                         f"the best single patch for every sentence, chosen with the truth (the most any "
                         f"image-blind map can score; patch {tuple(result['best_fixed_patch'] or ())} of the grid) "
                         f"{result['best_fixed_patch_hit_rate']:.1%}; and one such patch per finding kind (knowing "
                         f"what the sentence names, but neither the image nor the side it gives) "
                         f"{result['best_fixed_patch_per_finding_hit_rate']:.1%}. Chance and the first two are what a "
                         f"map must beat to say anything about this image; the two oracles, on a coarse grid, sit "
                         f"high because findings cluster: the table below shows, kind by kind, where the maps beat "
                         f"them. Peaks on the X-ray itself rather than on its zero padding: "
                         f"{result['peak_on_image_rate']:.1%}.")
    contrast = result["contrast"]
    flat = contrast["peak_over_mean"] < FLAT_PEAK_OVER_MEAN
    section.items.append(f"{'Warning: the maps are nearly flat. ' if flat else ''}Median map peak / mean "
                         f"{contrast['peak_over_mean']:.2f}, (max - min) / mean {contrast['range_over_mean']:.2f}; "
                         f"maps of one image's sentences differ by {contrast['sentence_difference']:.1%} of the "
                         f"mean weight." + (" A flat map's peak rests on tiny differences, and each panel above "
                                            "stretches its colours to its own range: read the weights in the "
                                            "titles, and trust a peak only as far as the rate above beats chance "
                                            "and the three baselines." if flat else ""))
    rows = [[finding, entry["n_sentences"], entry["hit_rate"], entry["chance_rate"], entry["best_fixed_patch_hit_rate"]]
            for finding, entry in result["per_finding"].items()]
    section.items.append(Table(["finding", "sentences", "peak in region", "chance", "best patch for the kind"], rows))
    print(f"attention localisation ({result['attention']}): {result['hit_rate']:.3f} peak-in-region over "
          f"{result['n_sentences']} sentences vs chance {result['chance_rate']:.3f}, the image's mean map "
          f"{result['sentence_agnostic_hit_rate']:.3f}, the best fixed patch {result['best_fixed_patch_hit_rate']:.3f}"
          f" (per finding kind {result['best_fixed_patch_per_finding_hit_rate']:.3f})"
          f"; median map peak / mean {contrast['peak_over_mean']:.3f}"
          + (" (nearly flat maps)" if flat else ""), file=sys.stderr)
    return section


# ------------------------------------------------------------------------------------------------ CM-MIR
@contextlib.contextmanager
def _recorded_token_drops():
    """Record which patch tokens the ViT decoder keeps (its dropping is random and internal)."""
    from cgns.models import decoders

    record, original = {}, decoders.drop_tokens

    def recording(tokens, p):
        kept = original(tokens, p)
        record["kept"] = (kept != 0).any(dim=-1)  # [B, L]: a dropped token is all zeros
        return kept

    decoders.drop_tokens = recording
    try:
        yield record
    finally:
        decoders.drop_tokens = original


@torch.no_grad()
def reconstruct(model, batch: dict) -> dict:
    """CM-MIR on a batch: {"reconstruction": [B, 3, S, S], "kept": bool [B, h, w] or None (ResNet drops channels)}.

    Uses model.reconstruct(batch) when the model provides it; otherwise runs the same path as the stage-2 loss.
    """
    if hasattr(model, "reconstruct"):
        return model.reconstruct(batch)
    if getattr(model.config, "mir_masking", "features") == "input":  # MAE-style CM-MIR: input patches masked
        return model.masked_reconstruction(batch)
    _, patches = model.image_features(batch["image"])
    _, sentences, mask = model.text_features(batch["input_ids"], batch["attention_mask"], batch["sentence_index"])
    text_to_patch = model.cross_attention(patches, sentences, mask)["text_to_patch"]
    with torch.random.fork_rng(devices=[]), _recorded_token_drops() as record:
        torch.manual_seed(0)  # the same masks every time the report is made
        reconstruction = model.decoder(patches, text_to_patch)
    kept = record.get("kept")
    if kept is not None:
        kept = kept.reshape(kept.shape[0], *model.image_encoder.grid)  # [B, h, w]
    return {"reconstruction": reconstruction, "kept": kept}


def reconstruction_section(loaded, out_dir: Path, num_images: int, device: str) -> Section:
    model = loaded.model
    section = Section("CM-MIR: masked image reconstruction",
                      note="Input, the patch tokens the decoder kept (dropped ones greyed), the image it "
                           "reconstructs from the kept tokens fused with the report's text-to-image features, "
                           "and the absolute error (in normalised units).")
    if not getattr(model.config, "mir", False) or not hasattr(model, "decoder"):
        section.note = "This run was trained without CM-MIR (--no-mir): nothing to show."
        return section
    if loaded.stage < 2:
        section.note += (f" NOTE: {loaded.checkpoint.name} was written in stage 1, before the decoder is trained: "
                         f"these reconstructions are what an untrained decoder draws.")
    indices = _spread(len(loaded.dataset), num_images)
    batch = {k: v.to(device) for k, v in collate_items(loaded.dataset, indices).items()}
    result = reconstruct(model, batch)
    examples = [{"image": batch["image"][i].cpu(), "reconstruction": result["reconstruction"][i].cpu(),
                 "kept": None if result["kept"] is None else result["kept"][i].cpu()} for i in range(len(indices))]
    section.items.append(Figure(draw_reconstructions(examples, out_dir / "reconstruction.png"),
                                f"validation images {indices}"))
    return section


# ------------------------------------------------------------------------------------------------ retrieval
def retrieval_section(loaded, outputs, out_dir: Path, num_images: int) -> Section:
    from cgns.eval.retrieval import recall_at_k

    dataset = loaded.dataset
    n = len(outputs.indices)
    section = Section("Retrieval examples",
                      note=f"For a few validation images, the five reports (of {n}) closest to the image; the "
                           f"true report is highlighted.")
    if n == 0:
        section.error = "empty validation set"
        return section
    recall = recall_at_k(outputs.image_embeddings, outputs.report_embeddings, ks=(1, 5))
    section.items.append(f"Over these {n} pairs: image->report R@1 {recall['i2t_R@1']:.3f}, R@5 "
                         f"{recall['i2t_R@5']:.3f} (chance {1 / n:.3f} / {min(1.0, 5 / n):.3f}).")
    similarity = outputs.image_embeddings @ outputs.report_embeddings.T  # [N images, N reports]
    for position in _spread(n, num_images):
        index = outputs.indices[position]
        scores = similarity[position]
        # ties (identical reports) list the true one first, matching the rank R@k counts (strictly better only)
        top = sorted(range(n), key=lambda c: (-float(scores[c]), c != position))[:5]
        true_rank = int((scores > scores[position]).sum()) + 1
        true_text = _report_text(dataset.record(index))
        rows, highlight = [], set()
        for rank, candidate in enumerate(top, start=1):
            text = _report_text(dataset.record(outputs.indices[candidate]))
            mark = "true report" if candidate == position else ("same text as true" if text == true_text else "")
            if candidate == position:
                highlight.add(rank - 1)
            rows.append([rank, float(scores[candidate]), mark, text])
        if position not in top:
            rows.append([true_rank, float(scores[position]), "true report", true_text])
            highlight.add(len(rows) - 1)
        thumbnail = save_thumbnail(dataset[index]["image"], out_dir / f"retrieval_example_{index}.png")
        section.items.append(Row([Figure(thumbnail, f"validation image {index}: true report ranked {true_rank}"),
                                  Table(["rank", "cosine", "", "report"], rows, highlight_rows=highlight)]))
    return section


# ------------------------------------------------------------------------------------------------ CGNS
def cluster_section(loaded, outputs, truth, num_clusters_shown: int = 6, num_pairs: int = 6) -> Section:
    model, dataset = loaded.model, loaded.dataset
    section = Section("CGNS: what the clusters hold",
                      note="Validation sentences (their text features z1, as CGNS uses them for hard negatives) "
                           "assigned to the nearest k-means centroid by cosine. Do the clusters group the same "
                           "finding? 'label' is what the generator meant the sentence to say.")
    clustering = getattr(model, "clustering", None)
    if clustering is None:
        section.note = "This run was trained without CGNS (--no-cgns / --no-local): no clusters."
        return section
    if not bool(clustering.started):
        section.note = ("k-means had not started by this checkpoint (the mean sentence cosine stayed above "
                        f"{clustering.start_cosine}), so there are no clusters to show.")
        return section
    texts, labels = [], []
    for position, index in enumerate(outputs.indices):
        record = dataset.record(index)
        matches = match_sentences(record, truth) if truth else [None] * len(record["sentences"])
        count = len(outputs.sentence_features[position])
        texts += record["sentences"][:count]
        labels += [sentence_label(m) if truth else "" for m in matches[:count]]
    features = torch.cat(outputs.sentence_features)                                   # [M, D]
    centroids = torch.nn.functional.normalize(clustering.centroids.float().cpu(), dim=-1)  # [K, D]
    cosine = features @ centroids.T                                                   # [M, K]
    top2 = cosine.topk(2, dim=1)
    nearest, second = top2.indices[:, 0], top2.indices[:, 1]
    sizes = Counter(nearest.tolist())
    rows, pure, total = [], 0, 0
    for cluster, size in sizes.most_common():
        members = (nearest == cluster).nonzero()[:, 0].tolist()
        label_counts = Counter(labels[m] for m in members)
        top_label, top_count = label_counts.most_common(1)[0]
        pure, total = pure + top_count, total + size
        if len(rows) < num_clusters_shown:
            examples = Counter(texts[m] for m in members).most_common(4)
            rows.append([cluster, size, f"{top_label} ({top_count / size:.0%})" if truth else "-",
                         " | ".join(f"{t} (x{c})" for t, c in examples)])
    section.items.append(f"{len(sizes)} of {centroids.shape[0]} clusters hold validation sentences "
                         f"({len(texts)} sentences).")
    if truth:
        overall = Counter(labels).most_common(1)[0][1] / len(labels)
        section.items.append(f"Label purity of the clusters: {pure / total:.1%} (one cluster for everything "
                             f"would score {overall:.1%}).")
    section.items.append(Table(["cluster", "sentences", "main label", "most frequent sentences"], rows,
                               caption="largest clusters"))
    pair_rows = []
    for member in _spread(len(texts), num_pairs):
        hard = int(second[member])
        hard_members = (nearest == hard).nonzero()[:, 0]
        example = (texts[int(hard_members[(features[hard_members] @ centroids[hard]).argmax()])]
                   if len(hard_members) else "(no validation sentence in this cluster)")
        pair_rows.append([texts[member], labels[member], int(nearest[member]), hard,
                          float(cosine[member, hard]), example])
    section.items.append(Table(["anchor sentence", "label", "its cluster", "hard-negative cluster",
                                "cosine to it", "a sentence of that cluster"], pair_rows,
                               caption="anchors and their hard negatives (second-nearest centroid)"))
    return section


# ------------------------------------------------------------------------------------------------ all
def _guarded(title: str, build, *args) -> list[Section]:
    """Run one panel builder; a failure becomes a visible error section (and a warning) instead of costing the
    whole report, which is written at the end of a long training run."""
    try:
        result = build(*args)
    except Exception as error:  # noqa: BLE001 - reported in the page and on stderr, not swallowed
        print(f"cgns.viz: panel '{title}' failed: {type(error).__name__}: {error}", file=sys.stderr)
        return [Section(title, error=f"this panel failed: {type(error).__name__}: {error}")]
    return result if isinstance(result, list) else [result]


def model_sections(run_dir: Path, out_dir: Path, *, num_images: int = 4, device: str = "cpu",
                   data_root=None) -> list[Section]:
    """Every model section; when the run has no checkpoint yet, one section saying so."""
    from cgns.viz.loading import load_run

    try:
        loaded = load_run(run_dir, device=device, data_root=data_root)
    except FileNotFoundError as error:
        return [Section("Model panels", error=f"not drawn: {error}")]
    truth = load_truth(loaded.data_root)
    outputs = run_validation(loaded.model, loaded.dataset, device=device, max_items=MAX_VALIDATION_ITEMS)
    intro = Section("Model", note=f"checkpoint {loaded.checkpoint.name} (stage {loaded.stage}), "
                                  f"{len(loaded.dataset)} validation pairs"
                                  + ("" if len(loaded.dataset) <= MAX_VALIDATION_ITEMS else
                                     f" (the panels use the first {MAX_VALIDATION_ITEMS})")
                                  + ("; generated data: the generator's truth is shown" if truth else ""))
    return ([intro]
            + _guarded("Cross-modal attention per sentence", attention_sections, loaded, outputs, truth, out_dir,
                       num_images)
            + _guarded("CM-MIR: masked image reconstruction", reconstruction_section, loaded, out_dir, num_images,
                       device)
            + _guarded("Retrieval examples", retrieval_section, loaded, outputs, out_dir, num_images)
            + _guarded("CGNS: what the clusters hold", cluster_section, loaded, outputs, truth))
