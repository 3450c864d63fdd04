"""YOLOv3 box geometry: encode/decode round trip, IoU by hand, NMS against a plain greedy loop."""
import pytest
import torch

from cgns.models.yolov3 import batched_nms, box_iou, decode_boxes, encode_boxes, nms


def random_boxes(n: int, generator: torch.Generator, extent: float = 100.0) -> torch.Tensor:
    """[n, 4] xyxy boxes with positive size inside [0, extent]."""
    corner = torch.rand(n, 2, generator=generator) * extent * 0.8
    size = torch.rand(n, 2, generator=generator) * extent * 0.4 + 1.0
    return torch.cat([corner, corner + size], dim=1)


def greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> list[int]:
    """The textbook loop: take the best remaining box, drop everything overlapping it by more than threshold."""
    remaining = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    kept = []
    while remaining:
        best = remaining.pop(0)
        kept.append(best)
        remaining = [i for i in remaining if float(box_iou(boxes[best:best + 1], boxes[i:i + 1])) <= threshold]
    return kept


def test_box_iou_hand_values():
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[0.0, 0, 10, 5], [5, 5, 15, 15], [20, 20, 30, 30], [0, 0, 10, 10]])
    expected = torch.tensor([[0.5, 25 / 175, 0.0, 1.0]])
    torch.testing.assert_close(box_iou(a, b), expected)


@pytest.mark.parametrize("stride", [8, 16, 32])
def test_encode_then_decode_is_identity(stride):
    generator = torch.Generator().manual_seed(stride)
    boxes = random_boxes(200, generator, extent=224.0)
    anchors = torch.rand(200, 2, generator=generator) * 100 + 5
    cell, offsets = encode_boxes(boxes, anchors, stride, grid_size=(224 // stride, 224 // stride))
    assert cell.dtype == torch.long and offsets.shape == (200, 4)
    assert (offsets[:, :2] >= 0).all() and (offsets[:, :2] <= 1).all()
    torch.testing.assert_close(decode_boxes(cell, offsets, anchors, stride), boxes, rtol=1e-5, atol=1e-4)


def test_encode_puts_centre_in_its_cell():
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [40.0, 8.0, 56.0, 40.0]])
    cell, offsets = encode_boxes(boxes, torch.tensor([[16.0, 16.0], [8.0, 64.0]]), 16)
    assert cell.tolist() == [[0, 0], [3, 1]]                     # centres (8, 8) and (48, 24)
    torch.testing.assert_close(offsets[:, :2], torch.tensor([[0.5, 0.5], [0.0, 0.5]]))
    torch.testing.assert_close(offsets[:, 2:], torch.log(torch.tensor([[1.0, 1.0], [2.0, 0.5]])))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_equals_greedy_reference(seed, threshold):
    generator = torch.Generator().manual_seed(seed)
    n = 60
    # clustered boxes so that suppression chains actually happen
    centres = random_boxes(6, generator)[torch.randint(0, 6, (n,), generator=generator)]
    boxes = centres + torch.randn(n, 4, generator=generator) * 4
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    scores = torch.rand(n, generator=generator)
    kept = nms(boxes, scores, threshold)
    assert kept.tolist() == greedy_nms(boxes, scores, threshold)
    assert 1 < len(kept) < n


def test_nms_empty_and_class_aware():
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []
    boxes = torch.tensor([[0.0, 0, 10, 10], [0.5, 0, 10, 10], [0, 0.5, 10, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [0]
    # the same overlapping boxes with different labels do not suppress each other
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5).tolist() == [0, 1]
