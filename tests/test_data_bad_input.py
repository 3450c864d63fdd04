"""Bad input: schema faults stop at once naming file, row and field; per-sample faults are skipped, counted and
summarised (errors under --strict); a failed run leaves no cache a later run would trust."""
import gzip
import json
import shutil

import pytest

from cgns.data.cache import Cache
from cgns.data.sources import SampleError, SchemaError
from cgns.preprocess import main, prepare


@pytest.fixture
def copy_of(test_world, tmp_path):
    def make(dataset):
        target = tmp_path / dataset
        shutil.copytree(test_world / dataset, target)
        return target
    return make


def edit_line(path, line_number, edit):
    """Apply `edit` to one 1-based line of a (possibly gzipped) text file."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        lines = f.read().split("\n")
    lines[line_number - 1] = edit(lines[line_number - 1])
    with opener(path, "wt") as f:
        f.write("\n".join(lines))


def prepare_into(root, tmp_path, **kw):
    return prepare(root.name, root, out=tmp_path / "cache", **kw)


# ---------------------------------------------------------------------------------------------- schema faults
def test_missing_column(copy_of, tmp_path):
    root = copy_of("chexpert")
    edit_line(root / "CheXpert-v1.0" / "train.csv", 1, lambda h: h.replace("Edema", "Oedema"))
    with pytest.raises(SchemaError, match=r"train\.csv: missing column\(s\) 'Edema'"):
        prepare_into(root, tmp_path)


def test_unknown_chexpert_label(copy_of, tmp_path):
    root = copy_of("chexpert")
    header = (root / "CheXpert-v1.0" / "valid.csv").read_text().split("\n")[0].split(",")
    column = header.index("Cardiomegaly")

    def set_cell(line):
        cells = line.split(",")
        cells[column] = "2.0"
        return ",".join(cells)
    edit_line(root / "CheXpert-v1.0" / "valid.csv", 4, set_cell)
    with pytest.raises(SchemaError, match=r"valid\.csv: row 4: field 'Cardiomegaly' has unknown label value '2\.0'"):
        prepare_into(root, tmp_path)


def test_unknown_rsna_target_and_bad_number(copy_of, tmp_path):
    root = copy_of("rsna")
    labels = root / "stage_2_train_labels.csv"
    original = labels.read_text()
    edit_line(labels, 3, lambda line: line.rsplit(",", 1)[0] + ",yes")
    with pytest.raises(SchemaError, match=r"row 3: field 'Target' has unknown value 'yes'"):
        prepare_into(root, tmp_path)
    labels.write_text(original)
    row = next(i for i, line in enumerate(original.split("\n"), 1) if line.endswith(",1"))
    edit_line(labels, row, lambda line: ",".join([line.split(",")[0], "abc"] + line.split(",")[2:]))
    with pytest.raises(SchemaError, match=rf"row {row}: field 'x' is not a number \('abc'\)"):
        prepare_into(root, tmp_path)


def test_unknown_covidx_label(copy_of, tmp_path):
    root = copy_of("covidx")
    edit_line(root / "test_COVIDx9A.txt", 2, lambda line: line.replace(line.split()[2], "flu"))
    with pytest.raises(SchemaError, match=r"test_COVIDx9A\.txt: line 2: field 'label' has unknown value 'flu'"):
        prepare_into(root, tmp_path)


def test_unknown_mimic_split(copy_of, tmp_path):
    root = copy_of("mimic_cxr")
    edit_line(root / "mimic-cxr-2.0.0-split.csv.gz", 5, lambda line: line.rsplit(",", 1)[0] + ",holdout")
    with pytest.raises(SchemaError, match=r"split\.csv\.gz: row 5: field 'split' has unknown value 'holdout'"):
        prepare_into(root, tmp_path)


@pytest.mark.parametrize("rle,message", [("1 2 3", "not a run-length string"), ("12 x", "not a run-length string")])
def test_malformed_rle(copy_of, tmp_path, rle, message):
    root = copy_of("siim")
    edit_line(root / "train-rle.csv", 3, lambda line: line.split(",")[0] + ", " + rle)
    with pytest.raises(SchemaError, match=rf"train-rle\.csv: row 3: field 'EncodedPixels' is {message}"):
        prepare_into(root, tmp_path)


def test_rle_past_the_image_fails_during_caching_and_leaves_nothing(copy_of, tmp_path):
    root = copy_of("siim")
    edit_line(root / "train-rle.csv", 4, lambda line: line.split(",")[0] + ", 5 10 999999 4")
    with pytest.raises(SchemaError, match=r"train-rle\.csv: row\(s\) 4 .*'EncodedPixels'.*beyond the 64x64 image"):
        prepare_into(root, tmp_path)
    # Neither the cache nor its temporary folder survives (only the builders' lock file).
    assert [p.name for p in tmp_path.iterdir() if p.name != "siim" and not p.name.endswith(".lock")] == []


@pytest.mark.parametrize("annotation,message", [
    ("3 1 2 3 4", "unknown TYPE '3'"), ("0 1 2 3", "TYPE 0 needs 4 coordinates"),
    ("2 1 1 5 1 3 3", None), ("2 1 1 5", "a polygon needs an even number >= 6"), ("0 a 2 3 4", "non-numeric value"),
])
def test_object_cxr_annotations(copy_of, tmp_path, annotation, message):
    root = copy_of("object_cxr")
    edit_line(root / "dev.csv", 3, lambda line: line.split(",")[0] + "," + annotation)
    if message is None:  # a valid polygon: its box is its extent
        cache = Cache(prepare_into(root, tmp_path))
        name = (root / "dev.csv").read_text().split("\n")[2].split(",")[0]
        assert next(r for r in cache.records if r["id"] == f"dev/{name}")["boxes"] == [[1.0, 1.0, 5.0, 3.0]]
        return
    with pytest.raises(SchemaError, match=rf"dev\.csv: row 3: field 'annotation', object 1: {message}"):
        prepare_into(root, tmp_path)


# ------------------------------------------------------------------------------------------ per-sample faults
def test_missing_and_truncated_images_are_skipped_and_counted(copy_of, tmp_path):
    root = copy_of("covidx")
    files = sorted((root / "train").iterdir())
    files[0].unlink()
    files[1].write_bytes(files[1].read_bytes()[:200])
    cache = Cache(prepare_into(root, tmp_path))
    counts = cache.summary["skipped"]["counts"]
    assert counts == {"missing image": 1, "truncated or unreadable image": 1}
    assert len(cache.records) == len(json.loads((root / "ground_truth.json").read_text())["images"]) - 2
    with pytest.raises(SampleError, match=rf"{files[0].name}: image file not found .*--strict"):
        prepare(root.name, root, out=tmp_path / "strict", strict=True)


def test_unreadable_dicom_is_skipped(copy_of, tmp_path):
    root = copy_of("rsna")
    dicom = sorted((root / "stage_2_train_images").iterdir())[0]
    dicom.write_bytes(b"DICM" * 10)
    cache = Cache(prepare_into(root, tmp_path))
    assert cache.summary["skipped"]["counts"] == {"unreadable DICOM": 1}
    assert dicom.stem not in {r["id"] for r in cache.records}


def test_empty_and_missing_reports_are_counted_with_reasons(copy_of, tmp_path, capsys):
    root = copy_of("mimic_cxr")
    reports = sorted((root / "reports").rglob("*.txt"))
    reports[0].write_text("                FINAL REPORT\n INDICATION: ___\n\n IMPRESSION:\n\n Normal.\n")
    reports[1].unlink()
    out = main(["mimic_cxr", "--data-root", str(root), "--out", str(tmp_path / "cache"), "--workers", "0"])
    summary = Cache(out).summary
    assert summary["skipped"]["counts"] == {"empty report after parsing": 1, "missing report": 1}
    assert summary["notes"]["studies dropped"]["report empty after parsing"] == 1
    assert summary["notes"]["studies dropped"]["report file missing"] == 1
    printed = capsys.readouterr().out
    assert "1 x empty report after parsing" in printed and "1 x missing report" in printed
    assert "studies dropped" in printed
    with pytest.raises(SystemExit):
        main(["mimic_cxr", "--data-root", str(root), "--out", str(tmp_path / "strict"), "--strict", "--workers", "0"])
    assert "--strict" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- atomic and idempotent
def test_cache_is_reused_rebuilt_when_stale_and_never_trusted_half_written(copy_of, tmp_path):
    root = copy_of("object_cxr")
    out = prepare_into(root, tmp_path)
    stamp = (out / "images.npy").stat().st_mtime_ns
    assert prepare_into(root, tmp_path) == out and (out / "images.npy").stat().st_mtime_ns == stamp  # reused
    # A label file changed -> the fingerprint differs -> rebuilt.
    edit_line(root / "dev.csv", 2, lambda line: line.split(",")[0] + ",0 1 1 9 9")
    prepare_into(root, tmp_path)
    assert (out / "images.npy").stat().st_mtime_ns != stamp
    # A cache without its COMPLETE marker (an interrupted copy) is not trusted.
    (out / "COMPLETE").unlink()
    with pytest.raises(FileNotFoundError, match="not a complete cache"):
        Cache(out)
    assert Cache(prepare_into(root, tmp_path)).records
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")] == []


# ---------------------------------------------------------------------------------------------- layout variants
def test_chexpert_small_release_and_reports_elsewhere(copy_of, tmp_path, monkeypatch):
    from cgns.data.datasets import build

    root = copy_of("chexpert")
    (root / "CheXpert-v1.0").rename(root / "CheXpert-v1.0-small")
    for name in ("train.csv", "valid.csv"):
        path = root / "CheXpert-v1.0-small" / name
        path.write_text(path.read_text().replace("CheXpert-v1.0/", "CheXpert-v1.0-small/"))
    cache = Cache(prepare_into(root, tmp_path))
    assert cache.records and cache.records[0]["path"].startswith("CheXpert-v1.0-small/")
    # MIMIC reports kept outside the data root: prepared by hand with --reports-root, then reused by build().
    mimic = copy_of("mimic_cxr")
    shutil.move(str(mimic / "reports"), str(tmp_path / "elsewhere"))
    monkeypatch.setenv("CGNS_CACHE_DIR", str(tmp_path / "caches"))
    out = main(["mimic_cxr", "--data-root", str(mimic), "--reports-root", str(tmp_path / "elsewhere"),
                "--workers", "0"])
    assert Cache(out).summary["skipped"]["counts"] == {}
    dataset = build("pretrain", "mimic_cxr", "train", data_root=mimic)
    assert dataset.cache.path == out and len(dataset) > 0
