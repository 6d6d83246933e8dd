"""Partial labels: the ignore target, labels of several sources combined per patch, the loss on
"glacier of unknown type", and metrics that count each pixel once and say n/a."""

import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from al_loop.classes import BACKGROUND, CLEAN_ICE, DEBRIS, GLACIER, UNLABELED, combine_masks
from al_loop.model.data import UNKNOWN_GLACIER, HeldPixels, Sample, labelled_patches
from al_loop.model.metrics import SegmentationScores
from al_loop.model.training import evaluate_samples, loss_fn
from al_loop.synthetic import make_level1_folder
from al_loop.workspace import open_store
from cli import app

U, B, C, D, G = UNLABELED, BACKGROUND, CLEAN_ICE, DEBRIS, GLACIER


def test_labels_combine_stronger_over_weaker_and_typed_over_untyped():
    outline = np.array([[G, G, B, B, U]], np.uint8)  # inventory outline: glacier, type unknown
    glacier_map = np.array([[C, D, U, C, U]], np.uint8)  # a clean/debris map of one glacier
    expert = np.array([[U, U, U, U, U]], np.uint8)
    assert combine_masks([outline, glacier_map]).tolist() == [[C, D, B, C, U]]
    assert combine_masks([glacier_map, outline]).tolist() == [[C, D, B, B, U]]  # untyped never replaces a type
    expert[0, 1] = B  # the expert says: not glacier
    assert combine_masks([outline, glacier_map, expert]).tolist() == [[C, B, B, C, U]]


def test_unknown_glacier_loss_is_that_of_the_summed_glacier_probability():
    logits = torch.tensor([[1.0, 0.5, -0.5]])[:, :, None, None]  # one pixel, 3 classes
    weights = torch.tensor([0.2, 0.6, 0.9])
    target = torch.full((1, 1, 1), UNKNOWN_GLACIER, dtype=torch.uint8)
    p = logits.softmax(1)[0, :, 0, 0]
    loss = loss_fn(logits, target, weights, dice_weight=0.0, ce_weight=1.0)
    assert loss.item() == pytest.approx(-math.log(p[1] + p[2]), rel=1e-5)
    # the loss cannot be lowered by trading clean ice for debris: only the glacier sum counts
    swapped = loss_fn(logits[:, [0, 2, 1]], target, weights, dice_weight=1.0, ce_weight=1.0)
    assert swapped.item() == pytest.approx(loss_fn(logits, target, weights, 1.0, 1.0).item(), rel=1e-5)


def test_a_toy_model_learns_glacier_extent_from_untyped_labels():
    """Pixels: feature 0 says glacier, feature 1 says which type. Typed labels exist only for
    the left half; the right half is labelled "glacier, type unknown" or background. The model
    must still put the right half's glacier pixels in a glacier class."""
    torch.manual_seed(0)
    n = 64
    glacier = torch.rand(1, n, n) > 0.5
    debris = torch.rand(1, n, n) > 0.5
    x = torch.stack([glacier.float() * 2 - 1, debris.float() * 2 - 1], dim=1) + 0.1 * torch.randn(1, 2, n, n)
    target = torch.where(glacier, torch.where(debris, 2, 1), 0).to(torch.uint8)
    target[..., n // 2 :][glacier[..., n // 2 :]] = UNKNOWN_GLACIER
    model = torch.nn.Conv2d(2, 3, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    weights = torch.tensor([0.2, 0.6, 0.9])
    for _ in range(200):
        optimizer.zero_grad()
        loss_fn(model(x), target, weights, 1.0, 1.0).backward()
        optimizer.step()
    pred = model(x).argmax(1)
    right = (slice(None), slice(None), slice(n // 2, None))
    assert ((pred[right] > 0) == glacier[right]).float().mean() > 0.98  # extent learnt from untyped pixels
    assert (pred[right][glacier[right]] == torch.where(debris, 2, 1)[right][glacier[right]]).float().mean() > 0.9


def test_metrics_count_overlapping_pixels_once_and_an_absent_class_is_na():
    class Identity(torch.nn.Module):  # predicts the class stored in the single input channel
        def forward(self, x):
            return torch.nn.functional.one_hot(x[:, 0].long(), 3).permute(0, 3, 1, 2).float()

    truth = np.zeros((4, 6), np.uint8)
    truth[:, 2:4] = 1  # clean ice in the middle columns, shared by the two windows below
    pred = truth.copy()
    pred[0, 0] = 2  # one stray debris pixel: debris is absent from the labels
    pred[:, 2] = 0  # the shared column is missed
    samples = [Sample(k, 1, (k,), HeldPixels(pred[None, :, c : c + 4].astype(np.float32), np.ones((4, 4), bool)),
                      truth[:, c : c + 4].copy(), (0, c)) for k, c in enumerate((0, 2))]
    norm = {"mean": [0.0], "std": [1.0]}
    scores, _ = evaluate_samples(Identity(), samples, norm, ("background", "clean_ice", "debris"), torch.device("cpu"))
    rows = scores.as_dict()
    assert rows["clean_ice"]["support"] == 8  # columns 2-3 once, not the 4 shared pixels twice
    assert rows["clean_ice"]["iou"] == pytest.approx(4 / 8)
    assert math.isnan(rows["debris"]["iou"]) and rows["debris"]["support"] == 0
    assert rows["background"]["support"] == 16


def test_the_glacier_row_scores_untyped_labels_too():
    scores = SegmentationScores(("background", "clean_ice", "debris"), UNKNOWN_GLACIER)
    target = np.array([0, 0, 1, 2, UNKNOWN_GLACIER, UNKNOWN_GLACIER, 255])
    pred = np.array([0, 1, 1, 1, 2, 0, 2])
    scores.update(pred, target)
    rows = scores.as_dict()
    assert rows["glacier"]["support"] == 4 and rows["glacier"]["iou"] == pytest.approx(3 / 5)
    assert rows["clean_ice"]["support"] == 1 and rows["debris"]["iou"] == 0.0


def _env(ws):
    return {"AL_LOOP_WORKSPACE": str(ws), "COLUMNS": "200"}


def test_an_outline_inventory_and_a_glacier_map_combine_on_a_real_like_scene(tmp_path):
    data = make_level1_folder(tmp_path / "data")
    runner, env = CliRunner(), _env(tmp_path / "ws")
    assert runner.invoke(app, ["init"], env=env).exit_code == 0
    assert runner.invoke(app, ["ingest", "scene", str(data.folder), "-q"], env=env).exit_code == 0
    assert runner.invoke(app, ["ingest", "labels", str(data.outlines), "-q"], env=env).exit_code == 0
    refused = runner.invoke(
        app, ["ingest", "labels", str(data.glacier_map), "--map", "1=clean_ice", "--map", "2=debris"], env=env
    )
    assert refused.exit_code == 2
    assert "raster values [0] are not mapped" in refused.output
    assert "--map 0=unlabeled" in " ".join(refused.output.split())
    attribute = runner.invoke(app, ["ingest", "labels", str(data.glacier_map), "--attribute", "class"], env=env)
    assert attribute.exit_code == 2
    assert "--attribute names a column of vector labels" in " ".join(attribute.output.split())
    mapped = runner.invoke(app, ["ingest", "labels", str(data.glacier_map), "--map", "0=unlabeled",
                                 "--map", "1=clean_ice", "--map", "2=debris", "-q"], env=env)
    assert mapped.exit_code == 0, mapped.output
    from al_loop.config import open_workspace

    ws = open_workspace(tmp_path / "ws")
    store = open_store(ws)
    with store.session() as session:
        patches = labelled_patches(session)
        both = [p for p in patches.values() if len(p.labels) == 2]
        assert both, "the glacier map lies on patches the outlines label too"
        for item in both:
            p = item.patch
            combined = item.mask()
            truth = np.full((p.height, p.width), 255, np.uint8)
            part = data.truth[p.row_off : p.row_off + p.height, p.col_off : p.col_off + p.width]
            truth[: part.shape[0], : part.shape[1]] = part
            typed = np.isin(combined, (CLEAN_ICE, DEBRIS))
            assert typed.any() and (combined[typed] == truth[typed]).all()  # the map's types, exactly
            assert (combined == GLACIER).any()  # the outline's untyped glacier elsewhere
            assert ((combined == GLACIER) <= (truth != BACKGROUND)).all()
    store.dispose()
