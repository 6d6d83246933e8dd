"""Is the prediction score Label Studio shows an honest confidence? Temperature scaling measured on
a scene it was not fitted on.

    python benchmarks/calibration.py [--workspace DIR] [--quick]

Runs the README's walkthrough in a throwaway workspace (as ``benchmarks/prelabels.py`` does;
``--workspace`` reuses one that has been through it: a champion and an unlabelled synthetic pool
scene), then, with the champion:

* the temperature fitted when it was trained, and the ECE on its validation pixels before and
  after (in-sample: the pixels T was fitted on), from the version's metrics;
* on the pool scene (another place, never trained on, never fitted on; truth regenerated from
  its seed): the pixel ECE (15 bins) with T = 1 and with the fitted T, and per patch the
  difference between the score (the mean calibrated top-class probability) and the patch's
  pixel accuracy (mean absolute error) and their Spearman rank correlation.

The last line: ``calibration: T X, pool pixel ECE A -> B, patch |score - accuracy| C -> D`` (T = 1
-> fitted T).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from scipy.stats import spearmanr

from al_loop.model.calibration import expected_calibration_error, log_softmax, patch_confidence
from al_loop.model.inference import predict_proba
from al_loop.model.normalization import normalize
from al_loop.patches import read_patch
from db import registry

from prelabels import (  # benchmarks/prelabels.py: the same walkthrough and truth
    pool_truth,
    served_champion,
    walkthrough_workspace,
)

console = Console(width=160)


def pool_probabilities(root: Path):
    """The champion's class probabilities on the pool scene's patches, their truth (model class
    indices, -1 unknown) and valid masks, the fitted temperature and the version's metrics."""
    ws, store, holder = served_champion(root)
    served = holder.current
    with store.session() as session:
        patches, windows, _ = pool_truth(session)
        metrics = registry.champion(session).metrics
    index = np.full(256, -1, dtype=np.int64)
    for k, code in enumerate(served.codes):
        index[code] = k
    probs, truths, valids = [], [], []
    for p, window in zip(patches, windows, strict=True):
        pixels, valid = read_patch(ws, p, served.channels)
        x = torch.from_numpy(normalize(pixels, valid, served.normalization)[None])
        probs.append(predict_proba(served.model, x, device=holder.device)[0].numpy())
        truths.append(index[window])
        valids.append(valid & (index[window] >= 0))
    store.dispose()
    return probs, truths, valids, served.temperature, metrics, served.name


def scores(probs, truths, valids, temperature: float) -> dict[str, float]:
    confidence, correct, patch_scores, patch_accuracy = [], [], [], []
    for p, truth, valid in zip(probs, truths, valids, strict=True):
        if not valid.any():
            continue
        logp = log_softmax(np.log(np.clip(p[:, valid], 1e-12, None)).T, temperature)
        top = np.exp(logp.max(axis=1))
        right = logp.argmax(axis=1) == truth[valid]
        confidence.append(top)
        correct.append(right)
        patch_scores.append(patch_confidence(p, valid, temperature))
        patch_accuracy.append(right.mean())
    patch_scores, patch_accuracy = np.array(patch_scores), np.array(patch_accuracy)
    return {
        "pixel ECE": expected_calibration_error(np.concatenate(confidence), np.concatenate(correct)),
        "patch |score - accuracy|": float(np.abs(patch_scores - patch_accuracy).mean()),
        "patch Spearman": float(spearmanr(patch_scores, patch_accuracy).statistic),
        "mean score": float(patch_scores.mean()),
        "mean accuracy": float(patch_accuracy.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, help="a workspace that has been through the walkthrough")
    parser.add_argument("--quick", action="store_true", help="train 3 epochs: checks that it runs")
    args = parser.parse_args()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = walkthrough_workspace(args.workspace, tmp, args.quick, console)
        with console.status("predicting the pool"):
            probs, truths, valids, temperature, metrics, version = pool_probabilities(root)
    before, after = scores(probs, truths, valids, 1.0), scores(probs, truths, valids, temperature)
    fit = metrics.get("calibration") or {}
    table = Table(title=f"{version}: temperature {temperature:.3f} fitted on "
                        f"{fit.get('pixels', 0):,} validation pixels "
                        f"(ECE there {fit.get('ece_before')} -> {fit.get('ece_after')}); pool scene, "
                        f"{len(probs)} patches; "
                        f"{time.perf_counter() - began:.0f} s")
    for column in ("on the pool scene", "T = 1", f"T = {temperature:.3f}"):
        table.add_column(column, justify="left" if column.startswith("on") else "right")
    for key in before:
        table.add_row(key, f"{before[key]:.4f}", f"{after[key]:.4f}")
    console.print(table)
    console.print(
        f"calibration: T {temperature:.3f}, pool pixel ECE {before['pixel ECE']:.4f} -> {after['pixel ECE']:.4f}, "
        f"patch |score - accuracy| {before['patch |score - accuracy|']:.4f} -> "
        f"{after['patch |score - accuracy|']:.4f}",
        highlight=False,
    )


if __name__ == "__main__":
    main()
