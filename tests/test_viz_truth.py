"""The generator's truth lines up with what the model sees: sentences match, boxes land on the drawn pixels."""
import numpy as np
import pytest
import torch

from cgns.data.datasets import build
from cgns.data.transforms import CropTransform, resize_pad
from cgns.viz.truth import box_in_model_input, load_truth, match_sentences, sentence_label, sentence_regions

CACHE_SIZE, IMAGE_SIZE = 64, 48


@pytest.fixture(scope="module")
def validation(test_world):
    root = test_world / "mimic_cxr"
    dataset = build("pretrain", "mimic_cxr", "valid", data_root=root, image_size=IMAGE_SIZE, max_length=64,
                    cache_size=CACHE_SIZE)
    return dataset, load_truth(root)


def test_every_sentence_matches_the_generator(validation):
    dataset, truth = validation
    assert truth is not None and len(dataset) > 0
    labels = [sentence_label(m) for i in range(len(dataset)) for m in match_sentences(dataset.record(i), truth)]
    assert labels and "?" not in labels, labels
    located = [r for i in range(len(dataset))
               for r in sentence_regions(dataset.record(i), truth, CACHE_SIZE, IMAGE_SIZE) if r[0] is not None]
    assert located, "the validation split should name at least one drawn finding"


@pytest.mark.parametrize("height, width", [(64, 52), (50, 64), (64, 64)])
def test_box_follows_the_validation_transform(height, width):
    """Paint a box in an original image, push it through resize-pad + centre crop, compare with the mapped box."""
    box = (10, 20, 30, 44)
    original = np.zeros((height, width), dtype=np.uint8)
    original[box[1]:box[3], box[0]:box[2]] = 255
    square, placement = resize_pad(original, CACHE_SIZE)
    model_input = CropTransform(IMAGE_SIZE, train=False)(torch.from_numpy(square))[0]  # [S, S] in [-1, 1]
    ys, xs = torch.nonzero(model_input > 0, as_tuple=True)
    drawn = (xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1)
    record = {"scale": placement.scale, "top": placement.top, "left": placement.left}
    mapped = box_in_model_input(box, record, CACHE_SIZE, IMAGE_SIZE)
    assert np.allclose(drawn, mapped, atol=1.5), (drawn, mapped)


def test_no_truth_for_real_data(tmp_path):
    assert load_truth(tmp_path) is None and load_truth(None) is None
    (tmp_path / "ground_truth.json").write_text('{"dataset": "rsna"}')
    with pytest.raises(ValueError, match="no 'images' table"):
        load_truth(tmp_path)
