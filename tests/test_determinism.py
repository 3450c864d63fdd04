"""Same seed, same numbers: two pretraining runs that each build their own cache and tokenizer log the same losses
and end with the same weights (the `tokenizers` trainer once made the vocabulary, hence the ids, differ)."""
import json

import torch

import train_pretrain
from cgns.engine import checkpoint as ckpt

TINY = ["--image-size", "32", "--batch-size", "8", "--lr", "2e-3", "--no-progress", "--no-report",
        "--no-linear-eval", "--log-every", "1", "--stage1-epochs", "1", "--stage2-epochs", "1", "--max-steps", "5"]


def _train_records(out):
    """The logged training lines without their wall-clock fields."""
    rows = [r for r in map(json.loads, open(out / "log.jsonl")) if r["kind"] == "train"]
    return [{k: v for k, v in r.items() if k not in ("time", "samples_per_s")} for r in rows]


def test_two_runs_with_their_own_caches_log_the_same_losses(test_world, tmp_path, monkeypatch):
    for name in ("a", "b"):
        monkeypatch.setenv("CGNS_CACHE_DIR", str(tmp_path / f"cache_{name}"))
        train_pretrain.main(["--data-root", str(test_world / "mimic_cxr"), "--output-dir", str(tmp_path / name),
                             *TINY])
    vocabularies = [next((tmp_path / f"cache_{name}").glob("mimic_cxr-*/tokenizer/tokenizer.json")).read_bytes()
                    for name in ("a", "b")]
    assert vocabularies[0] == vocabularies[1]
    a, b = _train_records(tmp_path / "a"), _train_records(tmp_path / "b")
    assert len(a) == 5 and a == b
    assert a[0]["loss/total"] != a[-1]["loss/total"]  # it trained, it did not just repeat a constant
    first = ckpt.load_checkpoint(tmp_path / "a" / "checkpoints" / "latest.pt")["model"]
    second = ckpt.load_checkpoint(tmp_path / "b" / "checkpoints" / "latest.pt")["model"]
    assert first.keys() == second.keys()
    for key, value in first.items():
        assert torch.equal(value, second[key]), key
