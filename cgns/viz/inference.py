"""One pass of the trained model over (part of) the validation set: everything the model panels draw from."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class ValidationOutputs:
    indices: list[int]                                   # dataset indices, in order
    image_embeddings: torch.Tensor                       # [N, D] L2-normalised
    report_embeddings: torch.Tensor                      # [N, D] L2-normalised
    sentence_features: list = field(default_factory=list)  # per item: [S_i, D] L2-normalised (z1 of CGNS)
    attention_maps: list = field(default_factory=list)     # per item: [S_i, h, w] sentence -> patch attention
    attention_kind: str = "cross"                          # which attention the maps are (CGNSModel.local_attention)


def default_attention_kind(model) -> str:
    """The attention a run trained to ground: the grounding term's when it was on, else the cross-attention; a peer
    objective's word-region attention for a peer's model (cgns.models.peer)."""
    if getattr(model.config, "method", "cgns") != "cgns":
        from cgns.models.peer import LOCAL_KIND
        return LOCAL_KIND
    return "grounding" if getattr(model.config, "grounding_weight", 0.0) > 0 else "cross"


def collate_items(dataset, indices: list[int]) -> dict:
    """Stack the dataset items at `indices` into a batch (tensors stacked, 'index' as long[B])."""
    items = [dataset[i] for i in indices]
    batch = {key: torch.stack([item[key] for item in items]) for key in ("image", "input_ids", "attention_mask",
                                                                          "sentence_index")}
    batch["index"] = torch.tensor([item["index"] for item in items], dtype=torch.long)
    return batch


@torch.no_grad()
def run_validation(model, dataset, *, device: str = "cpu", batch_size: int = 16, max_items: int | None = None,
                   with_attention: bool = True, attention_kind: str | None = None) -> ValidationOutputs:
    """Embeddings, per-sentence features and attention maps of the first `max_items` validation items.

    attention_kind: 'cross' or 'grounding' (see CGNSModel.local_attention); default default_attention_kind(model).
    """
    model.eval()
    kind = attention_kind or default_attention_kind(model)
    count = len(dataset) if max_items is None else min(len(dataset), max_items)
    indices = list(range(count))
    images, reports, sentence_features, maps = [], [], [], []
    for start in range(0, count, batch_size):
        batch = collate_items(dataset, indices[start:start + batch_size])
        batch = {k: v.to(device) for k, v in batch.items()}
        images.append(model.encode_image(batch["image"]).float().cpu())
        report, sentences, mask = model.text_features(batch["input_ids"], batch["attention_mask"],
                                                      batch["sentence_index"], batch["index"])
        reports.append(report.float().cpu())
        sentences = F.normalize(sentences.float(), dim=-1).cpu()        # [B, S, D]
        sentence_features.extend(sentences[b][mask[b].cpu()] for b in range(len(sentences)))
        if with_attention and (kind == "grounding" or hasattr(model, "cross_attention")):
            attention = model.local_attention(batch, kind=kind)
            for b in range(len(sentences)):
                maps.append(attention["maps"][b][attention["sentence_mask"][b]].float().cpu())  # [S_b, h, w]
    dim = images[0].shape[1] if images else 0
    return ValidationOutputs(indices, torch.cat(images) if images else torch.zeros(0, dim),
                             torch.cat(reports) if reports else torch.zeros(0, dim), sentence_features, maps, kind)
