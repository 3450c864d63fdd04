"""CM-CGNS pretraining on MIMIC-CXR image/report pairs (two stages; see METHOD.md).

    python train_pretrain.py                                  # the demo: generated data, tiny model, 2 CPU cores
    python train_pretrain.py --config paper --data-root DIR --text-encoder BERT_DIR --amp fp16
    torchrun --nproc_per_node=2 train_pretrain.py --config paper --data-root DIR ...

Re-running with the same --output-dir resumes from its checkpoints/latest.pt.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import torch

from cgns.cli import add_common_args, print_final, write_metrics
from cgns.data.roots import resolve_data_root
from cgns.engine import checkpoint as ckpt
from cgns.distributed import (barrier, cleanup_distributed, init_distributed, log_main, seed_for_data,
                                     seed_for_model)
from cgns.engine.pretrain import LoopConfig, Pretrainer

DATASET = "mimic_cxr"
# --config presets; any flag given on the command line wins over them
PRESETS = {
    # demo: 64 px crops (4x4 patches) so that ~1,400 steps fit in about 7 CPU minutes; lr 3e-4 measured best of
    # 1e-4 / 2e-4 / 3e-4 / 5e-4 (5e-4 collapses the random-init model to chance, 1e-4 barely leaves it). It adds the
    # grounding term (not in METHOD.md; --grounding-weight 0 removes it): over three seeds it gives sentence maps
    # that peak in their finding's region 3-4x more often than chance, and higher retrieval and probe (README)
    "demo": dict(image_encoder="vit_tiny", image_size=64, embed_dim=128, num_clusters=16, max_length=96,
                 batch_size=32, lr=3e-4, stage1_epochs=15, stage2_epochs=2, warmup_epochs=1.0, amp="none",
                 clip_grad=1.0, text_hidden_size=128, text_layers=2, text_heads=4, decoder_layers=2,
                 decoder_heads=4, decoder_feedforward=256, local_image_weight=0.1,
                 local_text_weight=0.1, kmeans_reseed_share=0.5, grounding_weight=1.0, grounding_temperature=25.0),
    "paper": dict(image_encoder="vit_base", image_size=224, embed_dim=768, num_clusters=128, max_length=256,
                  batch_size=64, lr=1e-5, stage1_epochs=10, stage2_epochs=20, warmup_epochs=1.0, amp="fp16",
                  clip_grad=0.0, text_hidden_size=768, text_layers=12, text_heads=12, decoder_layers=6,
                  decoder_heads=8, decoder_feedforward=2048, local_image_weight=1.0,
                  local_text_weight=1.0, kmeans_reseed_share=0.0, grounding_weight=0.0, grounding_temperature=4.0),
}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="CM-CGNS two-stage pretraining", add_help=True)
    add_common_args(parser, epochs=None, batch_size=None, image_size=None)
    parser.add_argument("--config", choices=sorted(PRESETS), default="demo",
                        help="defaults for every size/optimisation flag: 'demo' (tiny, CPU) or 'paper'")
    model = parser.add_argument_group("model")
    model.add_argument("--image-encoder", choices=["vit_tiny", "vit_small", "vit_base", "resnet50"])
    model.add_argument("--image-weights", default=None, help="timm ViT / torchvision ResNet-50 state dict file")
    model.add_argument("--text-encoder", default=None,
                       help="local BERT folder (e.g. Bio_ClinicalBERT); default: a small random BERT")
    model.add_argument("--tokenizer", default=None, help="tokenizer folder; default: the --text-encoder folder, "
                       "else a WordPiece trained on the training reports (saved beside the data cache)")
    model.add_argument("--max-length", type=int, help="tokens per report")
    model.add_argument("--embed-dim", type=int, help="shared projection width")
    model.add_argument("--text-hidden-size", type=int, help="random BERT width (ignored with --text-encoder)")
    model.add_argument("--text-layers", type=int, help="random BERT depth (ignored with --text-encoder)")
    model.add_argument("--text-heads", type=int, help="random BERT heads (ignored with --text-encoder)")
    model.add_argument("--decoder-layers", type=int, help="CM-MIR ViT decoder layers")
    model.add_argument("--num-clusters", type=int, help="k-means centroids (k)")
    model.add_argument("--cgns-weighting", choices=["multiply", "add"], default="multiply",
                       help="hard-negative weights multiply the logits (original) or add log-weights (ClusterNS)")
    model.add_argument("--kmeans-update", choices=["sum", "mean"], default="sum",
                       help="centroid momentum update from the members' sum (original) or mean")
    model.add_argument("--kmeans-reseed-share", type=float,
                       help="re-initialise the centroids when one holds more than this share of a step's sentences "
                            "(0: never, the original)")
    model.add_argument("--local-image-weight", type=float,
                       help="weight of loss 2, local image SimSiam (METHOD.md: 1; see CGNSConfig for the demo's)")
    model.add_argument("--local-text-weight", type=float,
                       help="weight of loss 3, local text + false negatives (METHOD.md: 1)")
    from cgns.models.cgns import ATTENTION_NORMS, ATTENTION_SCALES, GROUNDING_CONTEXTS

    model.add_argument("--attention-scale", choices=list(ATTENTION_SCALES), default="sqrt_d",
                       help="cross-attention scores q.k / sqrt(D) (METHOD.md), or also times a learnable exp(s) "
                            "initialised at D ('learnable': unit-norm inputs otherwise leave the maps flat)")
    model.add_argument("--attention-norm", choices=list(ATTENTION_NORMS), default="sigmoid",
                       help="cross-attention weights: sigmoid (METHOD.md) or softmax (ablation, as MGCA / GLoRIA; "
                            "pair it with --attention-scale learnable, else the weights are near uniform)")
    model.add_argument("--grounding-weight", type=float,
                       help="weight of an added sentence-region grounding term, GLoRIA's local loss with sentences "
                            "for words (not in METHOD.md; 0: off, the method; demo preset 1, paper preset 0)")
    model.add_argument("--grounding-temperature", type=float,
                       help="t1 of the grounding term: sharpness of each sentence's softmax over the patches "
                            "(GLoRIA's 4, the paper preset; demo preset 25)")
    model.add_argument("--grounding-block", type=int, default=0,
                       help="tokens the grounding term attends over: 0 = the local tokens (last block), k = the "
                            "patch tokens after ViT block k, through their own projection")
    model.add_argument("--grounding-context", choices=list(GROUNDING_CONTEXTS), default="sentence",
                       help="what the grounding term's sentence features see: their own sentence only (one more "
                            "text-encoder pass), or the whole report (the features of losses 2-4)")
    model.add_argument("--no-cgns", action="store_true", help="ablation: plain local text loss, no clustering")
    model.add_argument("--no-mir", action="store_true", help="ablation: no CM-MIR reconstruction in stage 2")
    model.add_argument("--no-local", action="store_true", help="ablation: global loss only (ConVIRT-style)")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--stage1-epochs", type=int, help="epochs of stage 1 (losses 1-3)")
    optim.add_argument("--stage2-epochs", type=int, help="epochs of stage 2 (adds CM-MIR); 0 skips it")
    optim.add_argument("--stage2-init", choices=["last", "best"], default="last",
                       help="stage 2 starts from the end of stage 1 or from its best validation checkpoint")
    optim.add_argument("--lr", type=float, help="peak learning rate (Adam)")
    optim.add_argument("--weight-decay", type=float, default=1e-6)
    optim.add_argument("--warmup-epochs", type=float, help="linear warm-up from 1e-7, per step, then cosine")
    optim.add_argument("--accum-steps", type=int, default=1, help="micro-batches per optimiser step")
    optim.add_argument("--clip-grad", type=float, help="max gradient norm (0: off)")
    optim.add_argument("--amp", choices=["none", "bf16", "fp16"], help="mixed precision (GPU only)")
    optim.add_argument("--max-bad-steps", type=int, default=5, help="stop after this many NaN/inf losses in a row")
    run = parser.add_argument_group("run")
    run.add_argument("--save-every", type=int, default=200, help="optimiser steps between checkpoints/latest.pt")
    run.add_argument("--log-every", type=int, default=10, help="optimiser steps between log.jsonl lines")
    run.add_argument("--max-steps", type=int, default=0, help="stop after this many steps in all (tests)")
    run.add_argument("--cache-size", type=int, default=256, help="side of the preprocessed image cache (px)")
    run.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    run.add_argument("--no-linear-eval", action="store_true",
                     help="demo only: skip the closing linear probe (pretrained vs random init on CheXpert)")
    run.add_argument("--no-report", action="store_true", help="skip the closing visual report (cgns.viz)")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    for key, value in PRESETS[args.config].items():
        if getattr(args, key, None) is None:  # decoder_heads / _feedforward have no flag: preset only
            setattr(args, key, value)
    if args.epochs is not None:
        parser.error("pretraining has two stages: use --stage1-epochs / --stage2-epochs instead of --epochs")
    if len(args.data_pct) != 1 or not 0 < args.data_pct[0] <= 1:
        parser.error(f"--data-pct: pretraining takes one fraction in (0, 1], got {args.data_pct}")
    if args.output_dir is None:
        args.output_dir = os.path.join("runs", f"pretrain_{args.config}")
    return args


def model_config(args, tokenizer, tokenizer_dir: str):
    from cgns.models.cgns import CGNSConfig

    values = dict(image_encoder=args.image_encoder, image_size=args.image_size, image_weights=args.image_weights,
                  text_encoder=args.text_encoder, text_vocab_size=len(tokenizer),
                  text_hidden_size=args.text_hidden_size, text_num_layers=args.text_layers,
                  text_num_heads=args.text_heads, text_max_positions=max(512, args.max_length),
                  pad_token_id=tokenizer.pad_token_id, max_length=args.max_length, tokenizer_dir=tokenizer_dir,
                  embed_dim=args.embed_dim, num_clusters=args.num_clusters, kmeans_mode=args.kmeans_update,
                  kmeans_reseed_share=args.kmeans_reseed_share,
                  hard_negative_mode=args.cgns_weighting, decoder_layers=args.decoder_layers,
                  decoder_heads=args.decoder_heads, decoder_feedforward=args.decoder_feedforward,
                  kmeans_seed=args.seed, use_cgns=not (args.no_cgns or args.no_local), use_mir=not args.no_mir,
                  use_local=not args.no_local, local_image_weight=args.local_image_weight,
                  local_text_weight=args.local_text_weight, attention_scale=args.attention_scale,
                  attention_norm=args.attention_norm, grounding_weight=args.grounding_weight,
                  grounding_attention_temperature=args.grounding_temperature,
                  grounding_block=args.grounding_block, grounding_context=args.grounding_context)
    return CGNSConfig(**values)


def build_data(args, info):
    """(train, valid, tokenizer, tokenizer_dir). Rank 0 generates / preprocesses first, the others then reuse it."""
    from cgns.data.datasets import build

    tokenizer_path = args.tokenizer or args.text_encoder
    common = dict(data_root=None, image_size=args.image_size, seed=args.seed, tokenizer=tokenizer_path,
                  max_length=args.max_length, cache_size=args.cache_size)
    for turn in (0, 1):  # turn 0: rank 0 builds caches and tokenizer; turn 1: the other ranks load them
        if (turn == 0) == info.is_main:
            common["data_root"] = resolve_data_root(DATASET, args.data_root)
            train = build("pretrain", DATASET, "train", data_pct=args.data_pct[0], augment=True, **common)
            valid = build("pretrain", DATASET, "valid", **{**common, "tokenizer": train.tokenizer})
        barrier()
    tokenizer_dir = tokenizer_path or str(Path(train.cache.path) / "tokenizer")
    return train, valid, train.tokenizer, str(tokenizer_dir)


def loop_config(args) -> LoopConfig:
    names = {f.name for f in dataclasses.fields(LoopConfig)}
    values = {k: v for k, v in vars(args).items() if k in names and k != "data_pct"}
    return LoopConfig(**values, data_pct=args.data_pct[0], progress_bar=not args.no_progress)


def main(argv=None) -> dict:
    args = parse_args(argv)
    info = init_distributed(args.device)
    try:
        return run(args, info)
    finally:
        cleanup_distributed()


def run(args, info) -> dict:
    from cgns.models.cgns import CGNSModel

    train_set, valid_set, tokenizer, tokenizer_dir = build_data(args, info)
    config = model_config(args, tokenizer, tokenizer_dir)
    seed_for_model(args.seed)  # identical initial weights on every rank
    model = CGNSModel(config)
    seed_for_data(args.seed, info.rank)  # per-rank augmentation, dropout and masking
    out = Path(args.output_dir)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "args.json").write_text(json.dumps({**vars(args), "world_size": info.world_size}, indent=2,
                                                  default=str))
    log_main(info, f"pretraining {config.image_encoder}@{config.image_size}px + "
                   f"{config.text_encoder or 'random BERT'}: {len(train_set)} train / {len(valid_set)} valid pairs, "
                   f"{info.world_size} process(es) on {info.device}, output {out}")
    trainer = Pretrainer(model, train_set, valid_set, _collate(), loop_config(args), info, out,
                         config.to_dict(), run_args={**vars(args), "world_size": info.world_size},
                         extra_state={"tokenizer_dir": tokenizer_dir},
                         upgrade_config=lambda saved: type(config).from_dict(saved).to_dict())
    resume = Path(args.checkpoint) if args.checkpoint else ckpt.find_resume(out)
    if resume is not None:
        trainer.resume(resume)
    val = trainer.fit()
    metrics = {"val": {k.removeprefix("val/"): v for k, v in val.items()},
               "data": {"train_pairs": len(train_set), "valid_pairs": len(valid_set), "data_pct": args.data_pct[0]},
               "steps": trainer.progress.global_step}
    if info.is_main:
        metrics.update(closing_summary(args, out, val))
        write_metrics(out, metrics)
        print_final(metrics)
    return metrics


def _collate():
    from cgns.data.datasets import collate

    return collate("pretrain")


def closing_summary(args, out: Path, val: dict) -> dict:
    """Print what was learned: retrieval vs chance; on demo data the linear probe vs random init; the report."""
    extra = {}
    if val:
        print(f"retrieval on {val.get('retrieval/num_pairs')} held-out pairs (chance R@1/5/10 = "
              + "/".join(f"{val.get(f'retrieval/chance_R@{k}', 0):.3f}" for k in (1, 5, 10)) + "):")
        for way in ("i2t", "t2i"):
            print(f"  {way}: R@1/5/10 = " + "/".join(f"{val.get(f'retrieval/{way}_R@{k}', 0):.3f}"
                                                      for k in (1, 5, 10)))
    final = ckpt.checkpoint_dir(out) / ckpt.FINAL
    if args.data_root is None and not args.no_linear_eval and final.is_file():
        extra["linear_probe"] = linear_comparison(args, out, final)
    if not args.no_report:
        try:
            from cgns.viz import write_report
            print(f"visual report: {write_report(out)}")
        except Exception as err:  # the trained model is saved already; a report failure must not hide it
            print(f"visual report failed ({type(err).__name__}: {err}); retry with: python -m cgns.viz {out}")
    return extra


def linear_comparison(args, out: Path, final: Path) -> dict:
    """Macro AUROC of a linear probe on the demo CheXpert data: this run's encoder vs the same encoder at random."""
    try:
        from cgns.engine.linear import run_linear_eval
    except ImportError as err:
        print(f"linear probe skipped: cgns.engine.linear is not available ({err})")
        return {}
    fractions = (0.01, 0.1, 1.0)
    scores = {}
    for name, source in (("pretrained", dict(checkpoint=final)), ("random_init", dict(random_init=True))):
        result = run_linear_eval("chexpert", encoder_name=args.image_encoder, image_size=args.image_size,
                                 seed=args.seed, output_dir=out / "linear" / name, log=lambda *a: None,
                                 data_pcts=fractions, device="cuda" if torch.cuda.is_available() else "cpu",
                                 **source)
        scores[name] = {key: split["test"]["auroc"] for key, split in result.items()}   # fraction -> AUROC
    scores["gain"] = {key: scores["pretrained"][key] - scores["random_init"][key] for key in scores["pretrained"]}
    print("linear probe on CheXpert (demo), test macro AUROC at 1% / 10% / 100% of the training split:")
    for name in ("pretrained", "random_init", "gain"):
        row = " / ".join(f"{value:+.3f}" if name == "gain" else f"{value:.3f}" for value in scores[name].values())
        print(f"  {name:<12} {row}")
    return scores


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
