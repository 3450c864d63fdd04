"""Image-to-text and text-to-image retrieval R@K over a split, with embeddings gathered across ranks."""
from __future__ import annotations

import contextlib

import torch

from cgns.distributed import gather_rows

KS = (1, 5, 10)


def recall_at_k(image_emb: torch.Tensor, text_emb: torch.Tensor, ks=KS) -> dict:
    """R@K both ways for N paired, L2-normalised embeddings (row i of each is one pair).

    image_emb, text_emb: [N, D]. A query counts as a hit at K when fewer than K candidates score STRICTLY higher
    than its own pair, so duplicates of the same report (same embedding) do not hurt each other.
    Returns {"i2t_R@K": float in [0,1], "t2i_R@K": ...}.
    """
    if image_emb.shape != text_emb.shape or image_emb.dim() != 2:
        raise ValueError(f"recall_at_k: expected two [N, D] tensors of equal shape, got "
                         f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}")
    sim = image_emb.float() @ text_emb.float().T  # [N images, N texts]
    true = sim.diagonal()  # [N]
    # rank of the true pair = number of candidates strictly better
    i2t_rank = (sim > true[:, None]).sum(dim=1)  # over texts, per image
    t2i_rank = (sim > true[None, :]).sum(dim=0)  # over images, per text
    out = {}
    for k in ks:
        out[f"i2t_R@{k}"] = (i2t_rank < k).float().mean().item()
        out[f"t2i_R@{k}"] = (t2i_rank < k).float().mean().item()
    return out


def chance_recall(n: int, ks=KS) -> dict:
    """Expected R@K of a random ranking over n candidates."""
    return {f"R@{k}": min(1.0, k / n) if n else 0.0 for k in ks}


@torch.no_grad()
def embed_split(model, loader, device, autocast=contextlib.nullcontext) -> tuple[torch.Tensor, torch.Tensor]:
    """(image_emb [N,D], text_emb [N,D]) of every item of the loader's dataset, all ranks gathered, row order =
    dataset 'index'. `model` is the UNWRAPPED model (encode_image / encode_text). Duplicate indices (a padded
    distributed sampler) are dropped."""
    images, texts, indices = [], [], []
    for batch in loader:
        with autocast():
            image = model.encode_image(batch["image"].to(device, non_blocking=True))
            text = model.encode_text(batch["input_ids"].to(device, non_blocking=True),
                                     batch["attention_mask"].to(device, non_blocking=True),
                                     batch["sentence_index"].to(device, non_blocking=True))
        images.append(image.float())
        texts.append(text.float())
        indices.append(torch.as_tensor(batch["index"], device=device).long())
    dim = images[0].shape[1] if images else 1
    image = torch.cat(images) if images else torch.zeros(0, dim, device=device)
    text = torch.cat(texts) if texts else torch.zeros(0, dim, device=device)
    index = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long, device=device)
    image, text, index = (gather_rows(t, with_grad=False)[0] for t in (image, text, index))
    order = torch.argsort(index, stable=True)
    index, image, text = index[order], image[order], text[order]
    keep = torch.ones_like(index, dtype=torch.bool)
    keep[1:] = index[1:] != index[:-1]
    return image[keep].cpu(), text[keep].cpu()


def evaluate_retrieval(model, loader, device, autocast=contextlib.nullcontext, ks=KS) -> dict:
    """{"i2t_R@1", ..., "t2i_R@10", "num_pairs"} over the loader's split (every rank gets the same answer)."""
    was_training = model.training
    model.eval()
    try:
        image, text = embed_split(model, loader, device, autocast)
    finally:
        model.train(was_training)
    metrics = recall_at_k(image, text, ks) if len(image) else {}
    metrics["num_pairs"] = int(len(image))
    return metrics


def precision_at_k(query_emb: torch.Tensor, candidate_emb: torch.Tensor, query_labels, candidate_labels,
                   ks=KS) -> dict:
    """Class-level retrieval: for each query, the share of its top-K candidates (by cosine similarity, ties in
    candidate order) that carry the query's class, averaged over queries, overall and per class.

    query_emb [Q, D], candidate_emb [N, D] (L2-normalised); query_labels [Q], candidate_labels [N] (class ids).
    Returns {"P@K": float, "per_class": {class id: {"P@K": float, "n": queries}}} for K in ks (K capped at N).
    """
    query_labels = torch.as_tensor(query_labels).long()
    candidate_labels = torch.as_tensor(candidate_labels).long()
    if query_emb.shape[0] != query_labels.shape[0] or candidate_emb.shape[0] != candidate_labels.shape[0]:
        raise ValueError(f"precision_at_k: {query_emb.shape[0]} queries with {query_labels.shape[0]} labels, "
                         f"{candidate_emb.shape[0]} candidates with {candidate_labels.shape[0]} labels")
    sim = query_emb.float() @ candidate_emb.float().T  # [Q, N]
    order = torch.sort(sim, dim=1, descending=True, stable=True).indices  # [Q, N]
    hits = candidate_labels[order] == query_labels[:, None]  # [Q, N] bool, in rank order
    out: dict = {"per_class": {}}
    for k in ks:
        kk = min(k, sim.shape[1])
        per_query = hits[:, :kk].float().mean(dim=1)  # [Q]
        out[f"P@{k}"] = per_query.mean().item() if len(per_query) else float("nan")
        for c in sorted(set(query_labels.tolist())):
            chosen = query_labels == c
            entry = out["per_class"].setdefault(c, {"n": int(chosen.sum())})
            entry[f"P@{k}"] = per_query[chosen].mean().item()
    return out
