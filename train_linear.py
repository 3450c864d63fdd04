"""Linear classification with a frozen image encoder (CheXpert, RSNA, COVIDx), one or several data fractions.

    python train_linear.py --dataset chexpert --data-pct 0.01 0.1 1 --checkpoint runs/pretrain_demo/checkpoints/final.pt
    python train_linear.py --config paper --dataset covidx --random-init --image-encoder resnet50 --data-root DIR
    python train_linear.py --config runs/linear_chexpert/config.json        # the same run again

Presets (`--config demo|paper|FILE`) and flags: cgns.engine.linear (LinearConfig, PRESETS). Prints the paper-style
row (1% / 10% / 100%) and writes <output-dir>/config.json and metrics.json:
{"<pct>": {"val": {...}, "test": {...}, "train": {...}}, "val": ..., "test": ... (largest fraction)}.
"""
from __future__ import annotations

from cgns.engine.downstream import run_downstream
from cgns.engine.linear import LINEAR


def main(argv=None) -> dict:
    config = LINEAR.parse(argv)   # --config demo|paper|FILE, then the flags given; --dataset required
    return LINEAR.report(config, run_downstream(LINEAR, config))   # paper-style rows and the final: line


if __name__ == "__main__":
    main()
