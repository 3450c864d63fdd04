import torch

from cgns.eval.retrieval import chance_recall, recall_at_k


def test_recall_hand_computed():
    image = torch.eye(3)
    # text 0 matches image 0; text 1 is closest to image 2 and text 2 to image 1 (swapped)
    text = torch.tensor([[1.0, 0, 0], [0, 0.2, 0.9], [0, 0.9, 0.2]])
    out = recall_at_k(image, text, ks=(1, 2))
    assert abs(out["i2t_R@1"] - 1 / 3) < 1e-6 and abs(out["t2i_R@1"] - 1 / 3) < 1e-6
    assert out["i2t_R@2"] == 1.0 and out["t2i_R@2"] == 1.0


def test_duplicate_reports_do_not_count_against_each_other():
    image = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    text = image.clone()
    text[1] = text[0]  # studies 0 and 1 have the same report, image 1 equal to image 0 as well
    image[1] = image[0]
    assert recall_at_k(image, text)["i2t_R@1"] == 1.0


def test_random_embeddings_sit_near_chance():
    generator = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(400, 16, generator=generator), dim=1)
    text = torch.nn.functional.normalize(torch.randn(400, 16, generator=generator), dim=1)
    out, chance = recall_at_k(image, text), chance_recall(400)
    # not learned, seeded statistics: max |R@10 - chance| 0.0125 over seeds 0-4, 1/2 threads, torch 2.13.0/2.14.1;
    # threshold 0.03
    assert abs(out["i2t_R@10"] - chance["R@10"]) < 0.03 and abs(out["t2i_R@10"] - chance["R@10"]) < 0.03
