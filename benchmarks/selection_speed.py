"""Speed of batch selection: choosing K of a large pool of stored patch scores.

Random scores, 35 scenes, centers scattered over 35 scenes' worth of ground, 32-D embeddings.
Each method is timed best of a few runs (other load on the machine only slows a run down). The
target: K=50 from 1,000,000 well under a second.

    python benchmarks/selection_speed.py [--pool 1000000] [--k 50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from al_loop.sampling.selection import select_batch


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    n, k = args.pool, args.k
    scores = rng.random(n)
    scene_ids = rng.integers(0, 35, n)
    centers = rng.uniform(0, 185_000, (n, 2)) + scene_ids[:, None] * 200_000.0  # metres
    embeddings = rng.normal(size=(n, 32)).astype(np.float32)

    runs = {
        "greedy, no constraints": lambda: select_batch(scores, k, method="greedy"),
        "greedy, cap 5/scene + 5 km radius": lambda: select_batch(
            scores, k, method="greedy", scene_ids=scene_ids, per_scene_cap=5, centers=centers,
            exclusion_radius=5_000.0,
        ),
        "kcenter (pool 5k = 250), cap + radius": lambda: select_batch(
            scores, k, method="kcenter", embeddings=embeddings, scene_ids=scene_ids, per_scene_cap=5,
            centers=centers, exclusion_radius=5_000.0,
        ),
        "power (beta 1), cap + radius": lambda: select_batch(
            scores, k, method="power", seed=0, scene_ids=scene_ids, per_scene_cap=5, centers=centers,
            exclusion_radius=5_000.0,
        ),
        "full argsort, for reference": lambda: np.argsort(-scores)[:k],
    }
    print(f"K={k} from {n:,} patch scores, best of {args.repeats}:")
    for name, fn in runs.items():
        print(f"  {name:<36} {best_of(args.repeats, fn) * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
