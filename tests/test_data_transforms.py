"""Transforms: resize-pad geometry, crops, normalisation, segmentation augmentation applied identically to the mask;
the tokenizer and its sentence_index; split helpers."""
import numpy as np
import pytest
import torch

from cgns.data.splits import data_pct_subset, split_counts, split_groups
from cgns.data.tokenizer import encode_sentences, load_tokenizer, train_wordpiece
from cgns.data.transforms import (CropTransform, DetectionTransform, SegmentationTransform, boxes_mask,
                                  mask_resize_pad, resize_pad)


def test_resize_pad_places_boxes_where_the_pixels_go():
    image = np.zeros((300, 150), np.uint8)  # portrait: long side 300 -> 100, padded left/right
    image[60:120, 30:90] = 255
    square, placement = resize_pad(image, 100)
    assert square.shape == (100, 100) and placement.scale == pytest.approx(1 / 3)
    assert (placement.top, placement.left) == (0, 25)
    x1, y1, x2, y2 = placement.boxes(np.array([[30, 60, 90, 120]]))[0]
    assert (x1, y1, x2, y2) == pytest.approx((35, 20, 55, 40))
    rows, cols = np.nonzero(square > 127)
    assert (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1) == (35, 20, 55, 40)
    assert square[:, :25].max() == 0 and square[:, 75:].max() == 0  # zero padding
    mask = mask_resize_pad((image > 0).astype(np.uint8), 100)
    assert np.array_equal(mask, (square > 127).astype(np.uint8))


def test_crops_and_normalisation():
    image = torch.arange(256 * 256, dtype=torch.float32).reshape(256, 256).remainder(256).to(torch.uint8)
    centre = CropTransform(224, train=False)
    out = centre(image)
    assert out.shape == (3, 224, 224) and torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    assert torch.allclose(out[0], (image[16:240, 16:240].float() / 255 - 0.5) / 0.5)
    assert torch.equal(centre(image), out)  # deterministic
    random = CropTransform(224, train=True)
    torch.manual_seed(0)
    crops = {tuple(random(image)[0, 0, :2].tolist()) for _ in range(10)}
    assert len(crops) > 1
    small = CropTransform(96, train=False)(image)
    assert small.shape == (3, 96, 96) and small.min() >= -1 and small.max() <= 1


def test_detection_boxes_scale_with_the_image():
    image = torch.zeros(256, 256, dtype=torch.uint8)
    image[64:128, 32:96] = 255
    out, boxes = DetectionTransform(128)(image, torch.tensor([[32.0, 64.0, 96.0, 128.0]]))
    assert boxes.tolist() == [[16.0, 32.0, 48.0, 64.0]]
    bright = out[0] > 0.5
    rows, cols = torch.nonzero(bright, as_tuple=True)
    assert (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1) == (16, 32, 48, 64)


def test_segmentation_augmentation_moves_image_and_mask_together():
    mask = torch.from_numpy(boxes_mask(np.array([[40, 60, 140, 200]]), 256, 256))
    image = mask * 255
    plain_image, plain_mask = SegmentationTransform(224, train=False)(image, mask)
    assert ((plain_image[0] > 0).float() == plain_mask[0]).float().mean() > 0.99
    augment = SegmentationTransform(224, train=True, p=1.0)
    torch.manual_seed(0)
    changed = 0
    for _ in range(5):
        aug_image, aug_mask = augment(image, mask)
        assert aug_mask.shape == (1, 224, 224) and set(aug_mask.unique().tolist()) <= {0.0, 1.0}
        agreement = ((aug_image[0] > 0).float() == aug_mask[0]).float().mean()
        assert agreement > 0.99  # same warp for both (edges differ by interpolation only)
        changed += not torch.equal(aug_mask, plain_mask)
        # scale within +-10%: the area changes by at most ~21%
        assert 0.75 < aug_mask.sum() / plain_mask.sum() < 1.3
    assert changed == 5
    off = SegmentationTransform(224, train=True, p=0.0)
    assert torch.equal(off(image, mask)[1], plain_mask)


def test_wordpiece_tokenizer_and_sentence_index(tmp_path):
    reports = ["no acute cardiopulmonary process", "small left pleural effusion", "the lungs are clear"] * 20
    folder = train_wordpiece(reports, tmp_path / "tokenizer", vocab_size=200)
    tokenizer = load_tokenizer(None, tmp_path)
    assert (folder / "tokenizer.json").is_file()
    sentences = ["small left pleural effusion", "the lungs are clear"]
    item = encode_sentences(tokenizer, sentences, max_length=32)
    ids, mask, index = item["input_ids"], item["attention_mask"], item["sentence_index"]
    n = int(mask.sum())
    assert ids[0] == tokenizer.cls_token_id and ids[n - 1] == tokenizer.sep_token_id
    assert (ids[n:] == tokenizer.pad_token_id).all() and (index[n:] == 0).all() and index[0] == 0 == index[n - 1]
    assert tokenizer.decode(ids[index == 1].tolist()) == sentences[0]
    assert tokenizer.decode(ids[index == 2].tolist()) == sentences[1]
    # Same ids as tokenising the joined report in one go.
    assert ids[:n].tolist() == tokenizer(" ".join(sentences))["input_ids"]
    short = encode_sentences(tokenizer, sentences, max_length=6)
    assert short["attention_mask"].sum() == 6 and short["input_ids"][5] == tokenizer.sep_token_id
    assert short["sentence_index"].tolist()[:5] == [0, 1, 1, 1, 1]


def test_local_bert_folder_is_loaded(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "no", "effusion", "small", "##er"]
    # The layout of a downloaded BERT (e.g. Bio_ClinicalBERT): config.json + vocab.txt; and a bare vocab.txt.
    for folder, files in (("bert", {"config.json": '{"model_type": "bert"}'}), ("vocab_only", {})):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
        for name, text in files.items():
            (tmp_path / folder / name).write_text(text)
        tokenizer = load_tokenizer(tmp_path / folder)
        item = encode_sentences(tokenizer, ["No effusion", "smaller effusion"], max_length=10)
        assert item["input_ids"][:7].tolist() == [2, 5, 6, 7, 8, 6, 3]
        assert item["sentence_index"][:7].tolist() == [0, 1, 1, 2, 2, 2, 0]
    with pytest.raises(FileNotFoundError, match="tokenizer folder"):
        load_tokenizer(tmp_path / "nothing")


def test_split_helpers_keep_groups_whole_and_subsets_nested():
    groups = [f"p{i // 3}" for i in range(300)]  # 100 patients, 3 images each
    splits = split_groups(groups, {"train": 0.7, "valid": 0.15, "test": 0.15})
    assert sorted(sum(splits.values(), [])) == list(range(300))
    owners = [{groups[i] for i in rows} for rows in splits.values()]
    assert not (owners[0] & owners[1]) and not (owners[0] & owners[2]) and not (owners[1] & owners[2])
    assert [len(o) for o in owners] == [70, 15, 15]
    assert split_groups(list(reversed(groups)), {"train": 0.7, "valid": 0.15, "test": 0.15})["valid"] == sorted(
        299 - i for i in splits["valid"])  # independent of row order
    fixed = split_counts(groups, {"a": 5, "b": 5}, rest="c")
    assert [len({groups[i] for i in fixed[k]}) for k in "abc"] == [5, 5, 90]
    keys = [f"img{i}" for i in range(500)]
    small, large = set(data_pct_subset(keys, 0.01, 42)), set(data_pct_subset(keys, 0.1, 42))
    assert len(small) == 5 and len(large) == 50 and small <= large
    with pytest.raises(ValueError, match="data_pct"):
        data_pct_subset(keys, 0.0, 42)
