"""The 5xN sets (exactly one positive label, fixed seed, written once and reused, a user's file honoured, the
largest N when the data is small) and the prompt file."""
import csv

import pytest

from cgns.data.sources import SchemaError
from cgns.data.sources.chexpert import CLASS_NAMES
from cgns.evaluate.prompts import expand, load_prompts, sample_prompts
from cgns.evaluate.selection import chexpert_5xn, draw_balanced, read_selection, single_positive

HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CLASS_NAMES]


def write_chexpert(root, per_class: int, extra_rows=()):
    """A CheXpert train.csv with `per_class` frontal single-positive rows per class, plus distractors."""
    folder = root / "CheXpert-v1.0"
    folder.mkdir(parents=True)
    rows, n = [], 0
    for c in range(5):
        for _ in range(per_class):
            n += 1
            cells = ["0.0"] * 5
            cells[c] = "1.0"
            cells[(c + 1) % 5] = ""            # blank counts as negative
            rows.append([f"CheXpert-v1.0/train/patient{n:05d}/study1/view1_frontal.jpg", "Male", 50, "Frontal", "PA",
                         *cells])
    rows += list(extra_rows)
    with open(folder / "train.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([HEADER, *rows])
    (folder / "valid.csv").write_text(",".join(HEADER) + "\n")
    return root


def distractors():
    two = ["1.0", "1.0", "0.0", "0.0", "0.0"]
    uncertain = ["1.0", "-1.0", "0.0", "0.0", "0.0"]
    none = ["0.0"] * 5
    lateral = ["1.0", "0.0", "0.0", "0.0", "0.0"]
    return [[f"CheXpert-v1.0/train/patient9000{i}/study1/view1_frontal.jpg", "F", 40, "Frontal", "AP", *cells]
            for i, cells in enumerate((two, uncertain, none))] + [
        ["CheXpert-v1.0/train/patient90009/study1/view2_lateral.jpg", "F", 40, "Lateral", "", *lateral]]


def test_single_positive_rule():
    row = dict(zip(CLASS_NAMES, ["0", "1.0", "", "0.0", "0"]))
    assert single_positive(row, "here") == 1
    assert single_positive(dict(zip(CLASS_NAMES, ["1", "1", "", "", ""])), "here") is None
    assert single_positive(dict(zip(CLASS_NAMES, ["1", "-1.0", "", "", ""])), "here") is None
    with pytest.raises(SchemaError, match="here: field 'Edema' has unknown label value 'x'"):
        single_positive(dict(zip(CLASS_NAMES, ["1", "0", "0", "x", "0"])), "here")


def test_chexpert_5xn_draws_written_once_and_reused(tmp_path):
    root = write_chexpert(tmp_path / "data", 6, distractors())
    split = tmp_path / "out" / "chexpert_5x200.csv"
    messages = []
    items = chexpert_5xn(root, split, n=4, log=messages.append)
    assert len(items) == 20 and sorted(c for _, c in items) == sorted(list(range(5)) * 4)
    assert not any("patient9000" in p for p, _ in items)          # two positives, uncertain, none, lateral
    again = chexpert_5xn(root, tmp_path / "other.csv", n=4, log=messages.append)
    assert again == items                                          # fixed seed: the same draw
    other_seed = chexpert_5xn(root, tmp_path / "seed1.csv", n=4, seed=1, log=messages.append)
    assert sorted(other_seed) != sorted(items)
    # written once: the file, edited, is what the next run reads
    lines = split.read_text().splitlines()
    split.write_text("\n".join(lines[:3]) + "\n")
    assert chexpert_5xn(root, split, n=4, log=messages.append) == items[:2]


def test_largest_n_when_the_world_is_small(tmp_path):
    root = write_chexpert(tmp_path / "data", 3)
    messages = []
    items = chexpert_5xn(root, tmp_path / "split.csv", log=messages.append)
    assert len(items) == 15
    assert any("at most 3 per class" in m and "5x3" in m for m in messages)
    with pytest.raises(ValueError, match="4 per class asked"):
        draw_balanced([(str(i), i % 5) for i in range(15)], 4)


def test_a_users_file_is_honoured(tmp_path):
    """MedCLIP's CheXpert-5x200 style: an 'imgpath' column with a prefix and the five labels one-hot."""
    user = tmp_path / "medclip_5x200.csv"
    with open(user, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["imgpath", *CLASS_NAMES])
        writer.writerow(["./data/CheXpert-v1.0-small/train/patient1/study1/view1_frontal.jpg", 0, 0, 1, 0, 0])
        writer.writerow(["./data/CheXpert-v1.0-small/train/patient2/study1/view1_frontal.jpg", 1, 0, 0, 0, 0])
    items = chexpert_5xn(tmp_path / "no_data_needed", user, log=lambda *a: None)
    assert items == [("CheXpert-v1.0-small/train/patient1/study1/view1_frontal.jpg", 2),
                     ("CheXpert-v1.0-small/train/patient2/study1/view1_frontal.jpg", 0)]


def test_bad_split_files_name_the_problem(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("image,label\na.jpg,Edema\n")
    with pytest.raises(SchemaError, match="bad.csv: missing column: one of 'Path'"):
        read_selection(bad)
    bad.write_text("Path,label\na.jpg,Flu\n")
    with pytest.raises(SchemaError, match="bad.csv: row 2: field 'label' has unknown value 'Flu'"):
        read_selection(bad)
    with pytest.raises(SchemaError, match="split file not found"):
        read_selection(tmp_path / "absent.csv")


def test_prompt_file_has_prompts_for_every_class():
    prompts = load_prompts()
    for name in (*CLASS_NAMES, "Pneumonia"):
        assert len(expand(prompts["classes"][name])) >= 10, name
        assert expand(prompts["negative"][name]), name
        assert all(s == " ".join(s.split()) and s for s in expand(prompts["classes"][name]))
    for name in prompts["tasks"]["covidx"].values():
        assert expand(prompts["classes"][name])
    assert set(prompts["tasks"]["chexpert"]) == set(CLASS_NAMES)
    # GLoRIA's construction: severity x subtype x location, blanks dropped
    assert expand({"severity": ["", "mild"], "subtype": ["edema"], "location": ["", "in both lungs"]}) == [
        "edema", "edema in both lungs", "mild edema", "mild edema in both lungs"]
    sample = sample_prompts(prompts["classes"]["Edema"], 5, key="Edema")
    assert len(sample) == 5 and sample == sample_prompts(prompts["classes"]["Edema"], 5, key="Edema")
    # restricted to a vocabulary: only prompts made of its words
    kept = sample_prompts(prompts["classes"]["Edema"], 50, vocabulary={"mild", "pulmonary", "edema"})
    assert kept == ["mild pulmonary edema", "pulmonary edema"]


def test_a_bad_prompt_file_names_the_problem(tmp_path):
    bad = tmp_path / "prompts.json"
    bad.write_text('{"classes": {"Edema": {"severity": ["mild"]}}, "negative": {}, "tasks": {}}')
    with pytest.raises(ValueError, match="Edema: missing word list"):
        load_prompts(bad)
