"""CM-CGNS pretraining on MIMIC-CXR image/report pairs (two stages; see METHOD.md).

    python train_pretrain.py                                  # the demo: generated data, tiny model, 2 CPU cores
    python train_pretrain.py --config paper --data-root DIR --text-encoder BERT_DIR
    python train_pretrain.py --config runs/pretrain_demo/config.json --output-dir runs/again   # the same run again
    torchrun --nproc_per_node=2 train_pretrain.py --config paper --data-root DIR ...
    python train_pretrain.py --method mgca                    # a peer objective (convirt, gloria, mgca) on the demo

Re-running with the same --output-dir resumes from its checkpoints/latest.pt.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from cgns.cli import print_final, write_metrics
from cgns.config import ConfigParser, write_config
from cgns.data.roots import resolve_data_root
from cgns.distributed import barrier, cleanup_distributed, init_distributed, log_main, seed_for_data, seed_for_model
from cgns.engine import checkpoint as ckpt
from cgns.engine.methods import METHODS
from cgns.engine.pretrain import Pretrainer
from cgns.engine.pretrain_config import PRESETS, PretrainConfig, resolve, with_method

DATASET = "mimic_cxr"


class PretrainParser(ConfigParser):
    """The presets seen through --method: a peer's run starts from the preset with the peer's objective and loop
    settings (pretrain_config.with_method), so that --help shows them and explicit flags still win."""

    method = None

    def parse(self, argv=None, *, namespace: bool = False):
        argv = list(sys.argv[1:] if argv is None else argv)
        pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        pre.add_argument("--method")
        self.method = pre.parse_known_args(argv)[0].method
        config, args = super().parse(argv, namespace=True)
        refuse_cgns_flags(config.model.method, vars(args))
        return (config, args) if namespace else config

    def base(self, name: str):
        config = super().base(name)
        if self.method in METHODS and name in self.presets:      # an unknown --method: argparse names the choices
            return with_method(config, self.method, name)
        return config


def refuse_cgns_flags(method: str, given: dict) -> None:
    """A clear error for CM-CGNS's own flags (loss weights, k-means, CM-MIR, ...) given with a peer's --method:
    the peer would train without them, and the run would look like an ablation it is not."""
    if method == "cgns":
        return
    from cgns.models.cgns import CGNSConfig
    from cgns.models.peer import PEER_FIELDS

    ignored = sorted(f.name for f in dataclasses.fields(CGNSConfig) if f.name in given and f.name not in PEER_FIELDS)
    if ignored:
        flags = ", ".join(("--no-" if given[name] is False else "--") + name.replace("_", "-") for name in ignored)
        raise SystemExit(f"--method {method} does not use {flags}: CM-CGNS's settings, which a peer objective "
                         f"ignores; drop them (a peer's own settings are its preset's, docs/METHODS.md)")


def config_parser() -> ConfigParser:
    return PretrainParser("CM-CGNS two-stage pretraining (or a peer objective's, --method)", PretrainConfig,
                          PRESETS, prog="train_pretrain.py")


def parse_args(argv=None) -> tuple[PretrainConfig, str]:
    """(the configuration before the tokenizer is known, the preset or file it started from)."""
    config, args = config_parser().parse(argv, namespace=True)
    return config, args.config


def build_data(config: PretrainConfig, info):
    """(train, valid, tokenizer, tokenizer_dir). Rank 0 generates / preprocesses first, the others then reuse it."""
    from cgns.data.datasets import build

    tokenizer_path = config.data.tokenizer or config.model.text_encoder
    common = dict(data_root=None, image_size=config.model.image_size, seed=config.loop.seed,
                  tokenizer=tokenizer_path, max_length=config.model.max_length, cache_size=config.data.cache_size)
    for turn in (0, 1):  # turn 0: rank 0 builds caches and tokenizer; turn 1: the other ranks load them
        if (turn == 0) == info.is_main:
            common["data_root"] = resolve_data_root(DATASET, config.data.data_root)
            train = build("pretrain", DATASET, "train", data_pct=config.data.data_pct, augment=True, **common)
            valid = build("pretrain", DATASET, "valid", **{**common, "tokenizer": train.tokenizer})
        barrier()
    tokenizer_dir = tokenizer_path or str(Path(train.cache.path) / "tokenizer")
    return train, valid, train.tokenizer, str(tokenizer_dir)


def main(argv=None) -> dict:
    config, preset = parse_args(argv)
    info = init_distributed(config.run.device)
    try:
        return run(config, preset, info)
    finally:
        cleanup_distributed()


def run(config: PretrainConfig, preset: str, info) -> dict:
    from cgns.models.peer import build_model

    train_set, valid_set, tokenizer, tokenizer_dir = build_data(config, info)
    config = resolve(config, preset, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                     tokenizer_dir=tokenizer_dir)
    model_config = config.model
    seed_for_model(config.loop.seed)  # identical initial weights on every rank
    model = build_model(model_config, tokenizer)
    seed_for_data(config.loop.seed, info.rank)  # per-rank augmentation, dropout and masking
    out = Path(config.run.output_dir)
    log_main(info, f"pretraining ({model_config.method}) {model_config.image_encoder}@{model_config.image_size}px + "
                   f"{model_config.text_encoder or 'random BERT'}: {len(train_set)} train / {len(valid_set)} valid "
                   f"pairs, {info.world_size} process(es) on {info.device}, output {out}")
    run_record = {**dataclasses.asdict(config), "world_size": info.world_size}
    trainer = Pretrainer(model, train_set=train_set, val_set=valid_set, collate_fn=_collate(model), cfg=config.loop,
                         info=info, output_dir=out, model_config=model_config.to_dict(), run_args=run_record,
                         extra_state={"tokenizer_dir": tokenizer_dir})
    resume = Path(config.run.checkpoint) if config.run.checkpoint else ckpt.find_resume(out)
    if resume is not None:
        trainer.resume(resume)
    if info.is_main:   # after the resume checks: a refused run leaves the folder's config.json as it was
        write_config(out, config)
    val = trainer.fit()
    metrics = {"val": {k.removeprefix("val/"): v for k, v in val.items()},
               "data": {"train_pairs": len(train_set), "valid_pairs": len(valid_set),
                        "data_pct": config.data.data_pct},
               "steps": trainer.progress.global_step}
    if info.is_main:
        metrics.update(closing_summary(config, out, val))
        write_metrics(out, metrics)
        print_final(metrics)
    return metrics


def _collate(model):
    """The pretraining collate, with the word layout where the objective groups word pieces into words (GLoRIA,
    MGCA: the step then reads nothing back from the device)."""
    import functools

    from cgns.data.datasets import collate_pretrain

    table = model.word_table() if hasattr(model, "word_table") else None
    return collate_pretrain if table is None else functools.partial(collate_pretrain, word_table=table)


def closing_summary(config: PretrainConfig, out: Path, val: dict) -> dict:
    """Print what was learned: retrieval vs chance; on demo data the linear probe vs random init; the report."""
    extra = {}
    if val:
        print(f"retrieval on {val.get('retrieval/num_pairs')} held-out pairs (chance R@1/5/10 = "
              + "/".join(f"{val.get(f'retrieval/chance_R@{k}', 0):.3f}" for k in (1, 5, 10)) + "):")
        for way in ("i2t", "t2i"):
            print(f"  {way}: R@1/5/10 = " + "/".join(f"{val.get(f'retrieval/{way}_R@{k}', 0):.3f}"
                                                      for k in (1, 5, 10)))
    final = ckpt.checkpoint_dir(out) / ckpt.FINAL
    if config.data.data_root is None and config.run.linear_eval and final.is_file():
        extra["linear_probe"] = linear_comparison(config, out, final)
    if config.run.report and config.model.method != "cgns":
        print(f"visual report: not made for --method {config.model.method} (it draws CM-CGNS's attention and "
              f"clusters)")
    elif config.run.report:
        try:
            from cgns.viz import write_report
            print(f"visual report: {write_report(out)}")
        except Exception as err:  # the trained model is saved already; a report failure must not hide it
            print(f"visual report failed ({type(err).__name__}: {err}); retry with: python -m cgns.viz {out}")
    return extra


def linear_comparison(config: PretrainConfig, out: Path, final: Path) -> dict:
    """Macro AUROC of a linear probe on the demo CheXpert data: this run's encoder vs the same encoder at random."""
    from cgns.engine.downstream import configure, run_downstream
    from cgns.engine.linear import DEMO, LINEAR

    scores = {}
    for name, source in (("pretrained", dict(checkpoint=str(final))), ("random_init", dict(random_init=True))):
        probe = configure(DEMO, dataset="chexpert", image_encoder=config.model.image_encoder,
                          image_size=config.model.image_size, seeds=(config.loop.seed,), data_pct=(0.01, 0.1, 1.0),
                          output_dir=str(out / "linear" / name),
                          device="cuda" if torch.cuda.is_available() else "cpu", **source)
        result = run_downstream(LINEAR, probe, log=lambda *a: None)
        scores[name] = {key: split["test"]["auroc"] for key, split in result.items()}   # fraction -> AUROC
    scores["gain"] = {key: scores["pretrained"][key] - scores["random_init"][key] for key in scores["pretrained"]}
    print("linear probe on CheXpert (demo), test macro AUROC at 1% / 10% / 100% of the training split:")
    for name in ("pretrained", "random_init", "gain"):
        row = " / ".join(f"{value:+.3f}" if name == "gain" else f"{value:.3f}" for value in scores[name].values())
        print(f"  {name:<12} {row}")
    return scores


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
