"""The WordPiece vocabulary built from training reports: a pure function of the reports (same bytes in any
process), the documented id order, no [UNK] on seen text, and a folder that loads as a BERT tokenizer."""
import os
import random
import subprocess
import sys
from pathlib import Path

from cgns.data.tokenizer import SPECIAL_TOKENS, build_vocabulary, encode_sentences, load_tokenizer, train_wordpiece

REPO = Path(__file__).resolve().parent.parent
REPORTS = [
    "No acute cardiopulmonary process.",
    "Small left pleural effusion; no pneumothorax.",
    "The lungs are clear. Heart size is normal.",
    "Moderate right pleural effusion with adjacent atelectasis.",
    "Mild pulmonary edema, improved since 2019-03-04.",
    "Naïve café-like opacity in the RIGHT lower lobe.",
] * 3 + ["Subtle left basilar opacity may reflect atelectasis or pneumonia."]


def test_two_processes_write_byte_identical_folders(tmp_path):
    # Hash seeds differ on purpose: set / dict order must not reach the files.
    script = ("import sys\nfrom cgns.data.tokenizer import train_wordpiece\n"
              f"train_wordpiece({REPORTS!r}, sys.argv[1])\n")
    for name, hash_seed in (("a", "1"), ("b", "2")):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO)}
        subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], check=True, env=env, cwd=tmp_path)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert {"tokenizer.json", "tokenizer_config.json", "vocab.txt"} <= set(files)
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_vocabulary_order_and_size():
    characters = sorted(",-.;012349abcdefghijklmnoprstuvwxyz")  # lower case, accents stripped (ï -> i, é -> e)
    n = len(characters)
    vocab = build_vocabulary(REPORTS, vocab_size=5 + 2 * n + 8)
    # Whole words by count, ties by spelling: 6 each, then 4 each (the last report adds one).
    words = ["effusion", "no", "pleural", "right", "the", "atelectasis", "left", "opacity"]
    assert vocab == [*SPECIAL_TOKENS, *characters, *(f"##{c}" for c in characters), *words]
    everything = build_vocabulary(REPORTS)
    assert everything[:len(vocab)] == vocab
    assert everything[-6:] == ["basilar", "may", "or", "pneumonia", "reflect", "subtle"]  # once each
    # Counting does not depend on the order of the reports.
    shuffled = REPORTS[:]
    random.Random(0).shuffle(shuffled)
    assert build_vocabulary(shuffled) == everything
    # Characters are kept past the budget (nothing seen may become [UNK]); min_frequency drops rare words.
    assert build_vocabulary(REPORTS, vocab_size=3) == vocab[:5 + 2 * n]
    assert set(everything) - set(build_vocabulary(REPORTS, min_frequency=2)) == set(everything[-6:])


def test_round_trip_has_no_unknown_tokens(tmp_path):
    train_wordpiece(REPORTS, tmp_path / "tokenizer", vocab_size=5)  # characters only: words are spelled out
    for tokenizer in (load_tokenizer(None, tmp_path), load_tokenizer(tmp_path / "tokenizer")):
        for report in REPORTS:
            ids = tokenizer(report)["input_ids"]
            assert tokenizer.unk_token_id not in ids, report
            assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
            text = tokenizer.decode(ids, skip_special_tokens=True)
            assert text.replace(" ", "") == report.lower().replace("ï", "i").replace("é", "e").replace(" ", "")
        assert tokenizer.tokenize("atelectasis pneumonia") == ["a", *(f"##{c}" for c in "telectasis"),
                                                                "p", *(f"##{c}" for c in "neumonia")]
        # A character never seen in training is the one way to get [UNK].
        assert tokenizer.unk_token_id in tokenizer("effusion %")["input_ids"]


def test_folder_loads_as_a_bert_tokenizer(tmp_path):
    from transformers import AutoTokenizer, BertTokenizerFast

    folder = train_wordpiece(REPORTS, tmp_path / "tokenizer")
    ours = load_tokenizer(None, tmp_path)
    lines = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert lines == build_vocabulary(REPORTS) and len(ours) == len(lines)
    sentences = ["Small left pleural effusion.", "No pneumothorax."]
    expected = encode_sentences(ours, sentences, max_length=24)
    for other in (BertTokenizerFast.from_pretrained(str(folder)), AutoTokenizer.from_pretrained(str(folder))):
        assert other.convert_ids_to_tokens(list(range(len(lines)))) == lines
        assert other.pad_token_id == 0 and other.cls_token_id == 2 and other.sep_token_id == 3
        item = encode_sentences(other, sentences, max_length=24)
        assert item["input_ids"].tolist() == expected["input_ids"].tolist()
    assert ours.tokenize("Small left pleural effusion.") == ["small", "left", "pleural", "effusion", "."]
