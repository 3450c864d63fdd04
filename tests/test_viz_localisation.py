"""The attention localisation measure: 1.0 when maps peak in the box, about chance for flat or random maps."""
import math

import pytest
import torch

from cgns.viz.localisation import box_area_fraction, localisation_score, peak_in_box

IMAGE = 224
GRID = 14  # 16-px patches


def random_boxes(n, generator):
    boxes = []
    for _ in range(n):
        w, h = (torch.randint(30, 120, (2,), generator=generator)).tolist()
        x, y = torch.randint(0, IMAGE - w, (1,), generator=generator).item(), \
            torch.randint(0, IMAGE - h, (1,), generator=generator).item()
        boxes.append((x, y, x + w, y + h))
    return boxes


def map_peaking_inside(box):
    attention = torch.rand(GRID, GRID) * 0.5
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    attention[int(cy // (IMAGE / GRID)), int(cx // (IMAGE / GRID))] = 1.0
    return attention


def test_peak_inside_scores_one():
    generator = torch.Generator().manual_seed(0)
    boxes = random_boxes(200, generator)
    result = localisation_score((map_peaking_inside(b), b, IMAGE, "effusion") for b in boxes)
    assert result["n_sentences"] == 200 and result["hit_rate"] == 1.0
    # lift min 8.71 over box seeds 0-4, 1/2 threads, torch 2.13.0/2.14.1; threshold 2
    assert 0.05 < result["chance_rate"] < 0.4 and result["lift"] > 2


def test_peak_outside_scores_zero():
    attention = torch.zeros(GRID, GRID)
    attention[0, 0] = 1.0
    assert peak_in_box(attention, (100, 100, 200, 200), IMAGE) == 0.0


def test_flat_map_scores_the_share_of_patches_in_the_box():
    # the box covers exactly 4 x 2 patches of 16 px -> 8 / 196 patches, and 8 / 196 of the area
    box = (32, 48, 96, 80)
    assert peak_in_box(torch.ones(GRID, GRID), box, IMAGE) == pytest.approx(8 / 196)
    assert box_area_fraction(box, IMAGE) == pytest.approx(8 / 196)


def test_random_and_flat_maps_score_about_chance():
    generator = torch.Generator().manual_seed(1)
    boxes = random_boxes(400, generator)
    random_maps = localisation_score((torch.rand(GRID, GRID, generator=generator), b, IMAGE, "x") for b in boxes)
    flat_maps = localisation_score((torch.full((GRID, GRID), 0.3), b, IMAGE, "x") for b in boxes)
    chance = random_maps["chance_rate"]
    # not learned, seeded statistics, over generator seeds 1-5, 1/2 threads, torch 2.13.0/2.14.1: |random - chance|
    # max 0.023 (threshold 0.05), |flat - chance| max 0.001 (threshold 0.02), random lift max 1.04 (threshold 1.5)
    assert abs(random_maps["hit_rate"] - chance) < 0.05, random_maps
    assert abs(flat_maps["hit_rate"] - chance) < 0.02, flat_maps
    assert random_maps["lift"] < 1.5


def test_box_clipped_to_image_and_rectangular_images():
    assert box_area_fraction((-10, -10, 50, 50), (100, 200)) == pytest.approx(50 * 50 / (100 * 200))
    attention = torch.zeros(4, 8)  # [h, w] grid over a 100 x 200 (H x W) image: 25 px cells
    attention[3, 7] = 2.0
    assert peak_in_box(attention, (175, 75, 200, 100), (100, 200)) == 1.0


def test_per_finding_and_shape_error():
    result = localisation_score([(torch.eye(GRID), (0, 0, 16, 16), IMAGE, "a"),
                                 (torch.eye(GRID), (200, 0, 224, 16), IMAGE, "b")])
    assert result["per_finding"]["a"]["hit_rate"] == pytest.approx(1 / GRID)
    assert result["per_finding"]["b"]["hit_rate"] == 0.0
    with pytest.raises(ValueError, match=r"\[h, w\] map"):
        peak_in_box(torch.ones(1, GRID, GRID), (0, 0, 1, 1), IMAGE)


def test_map_contrast_tells_flat_from_peaked_maps():
    """Peak / mean is 1 for a flat map; sentence_difference is 0 when every sentence of an image has one map."""
    from cgns.viz.localisation import map_contrast

    flat = torch.full((3, 4, 4), 0.5)
    peaked = torch.full((2, 4, 4), 0.1)
    peaked[0, 0, 0] = peaked[1, 3, 3] = 1.7                      # two sentences, different peaks
    assert map_contrast([flat]) == {"peak_over_mean": 1.0, "range_over_mean": 0.0, "sentence_difference": 0.0}
    result = map_contrast([peaked])
    assert result["peak_over_mean"] == pytest.approx(1.7 / 0.2) and result["range_over_mean"] == pytest.approx(8.0)
    assert result["sentence_difference"] == pytest.approx((2 * 0.8) / 16 / 0.2)
    assert math.isnan(map_contrast([])["peak_over_mean"])


def test_best_fixed_patch_finds_where_boxes_cluster():
    """50 boxes hold patch (row 5, col 9) and one more holds only patch (0, 0): the image-blind oracle picks
    (5, 9) and scores 50 / 51, far above chance; the position prior (the mean of the maps) scores its own peak."""
    from cgns.viz.localisation import best_fixed_patch_hit_rate, position_prior_hit_rate

    generator = torch.Generator().manual_seed(2)
    centre = (9 * 16 + 8, 5 * 16 + 8)  # pixel centre of patch (row 5, col 9)
    boxes = []
    for _ in range(50):
        left, up, right, down = (torch.randint(1, 40, (4,), generator=generator)).tolist()
        boxes.append((centre[0] - left, centre[1] - up, centre[0] + right, centre[1] + down))
    boxes.append((0, 0, 16, 16))  # only this one holds patch (0, 0)
    maps = [torch.rand(GRID, GRID, generator=generator) for _ in boxes]
    samples = [(m, b, IMAGE, "x") for m, b in zip(maps, boxes)]
    rate, patch = best_fixed_patch_hit_rate(samples)
    assert patch == (5, 9) and rate == pytest.approx(50 / 51)
    assert rate > 3 * localisation_score(samples)["chance_rate"]
    # every map peaking at (0, 0) makes the prior peak there too: it hits only the last box
    corner = [(torch.zeros(GRID, GRID).index_put_((torch.tensor(0), torch.tensor(0)), torch.tensor(1.0)), b,
               IMAGE, "x") for b in boxes]
    assert position_prior_hit_rate(corner) == pytest.approx(1 / 51)
    assert position_prior_hit_rate(samples) == localisation_score(
        (torch.stack(maps).mean(0), b, IMAGE, "x") for b in boxes)["hit_rate"]
    assert math.isnan(best_fixed_patch_hit_rate([])[0]) and math.isnan(position_prior_hit_rate([]))


def test_best_fixed_patch_per_finding_picks_a_patch_for_each_kind():
    """Kind 'a': 3 boxes on patch (0, 0), 1 on (1, 1); kind 'b': 2 boxes on (2, 3). One patch for all scores 3 / 6;
    one patch per kind scores (3 + 2) / 6, and each kind keeps its own patch and rate."""
    from cgns.viz.localisation import best_fixed_patch_hit_rate, best_fixed_patch_per_finding

    def on(row, col):  # a box holding only the centre of patch (row, col)
        return (col * 16 + 4, row * 16 + 4, col * 16 + 12, row * 16 + 12)

    flat = torch.zeros(GRID, GRID)
    samples = ([(flat, on(0, 0), IMAGE, "a")] * 3 + [(flat, on(1, 1), IMAGE, "a")]
               + [(flat, on(2, 3), IMAGE, "b")] * 2)
    assert best_fixed_patch_hit_rate(samples) == (pytest.approx(3 / 6), (0, 0))
    pooled, per_kind = best_fixed_patch_per_finding(samples)
    assert pooled == pytest.approx(5 / 6)
    assert per_kind == {"a": (pytest.approx(3 / 4), (0, 0)), "b": (pytest.approx(1.0), (2, 3))}
    assert math.isnan(best_fixed_patch_per_finding([])[0])
