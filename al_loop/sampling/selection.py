"""Choosing a diverse batch of patches to label from one score per patch.

Only a candidate pool (the top ``pool_factor * k`` by score, found with ``np.argpartition``) is
ever sorted, so picking 50 of a million stored scores takes milliseconds. Within the pool:

* ``greedy``: best score first, skipping patches that break a constraint;
* ``kcenter``: k-center greedy on the model's embeddings (Sener & Savarese 2018), trading score
  against distance to the patches already chosen: adjacent patches of one glacier look alike;
* ``power``: stochastic power sampling (Kirsch et al. 2023), without replacement with
  probability proportional to ``score ** power_beta`` (Gumbel-top-k). Mind the scale: on
  rank-normalised scores over a pool of 10^6, beta = 1 is nearly uniform; the top 0.1% only
  gets half of the mass near beta = 700.

Constraints, for every method: at most ``per_scene_cap`` patches per scene, and no two chosen
patches closer than ``exclusion_radius`` (centers in one frame for the whole pool, e.g. metres
in a common projection; patches of different scenes count too, as overlapping scenes cover the
same ground). When the pool runs out of feasible patches it grows (x4) up to the whole pool;
when constraints leave fewer than ``k`` feasible patches, fewer are returned.

Default method: ``kcenter`` when embeddings are given, else ``greedy`` (cold start has no
model, hence no embeddings). ``power`` is opt-in.
"""

from __future__ import annotations

import numpy as np

METHODS = ("greedy", "kcenter", "power")


def select_batch(
    scores: np.ndarray,
    k: int,
    *,
    scene_ids: np.ndarray | None = None,
    centers: np.ndarray | None = None,
    embeddings: np.ndarray | None = None,
    per_scene_cap: int | None = None,
    exclusion_radius: float = 0.0,
    method: str | None = None,
    seed: int | np.random.Generator | None = None,
    power_beta: float = 1.0,
    pool_factor: int = 5,
    diversity: float = 0.5,
) -> np.ndarray:
    """Indices of up to ``k`` patches to label, in the order they were chosen.

    ``scores`` (P,): higher = label first. ``scene_ids`` (P,), ``centers`` (P, 2) and
    ``embeddings`` (P, C) are needed only by the constraint or method that uses them.
    ``diversity`` in [0, 1] is the kcenter trade-off (0: score only, 1: pure k-center).
    ``seed`` matters for ``power`` only. Raises ValueError on bad input, including ``k`` larger
    than the pool (ask for at most ``len(scores)``).
    """
    scores = np.asarray(scores, dtype=np.float64)
    method = method or ("kcenter" if embeddings is not None else "greedy")
    _check(scores, k, scene_ids, centers, embeddings, per_scene_cap, exclusion_radius, method,
           power_beta, pool_factor, diversity)
    keys = _power_keys(scores, power_beta, seed) if method == "power" else scores
    n = len(scores)
    m = min(n, pool_factor * k)
    while True:
        pool = top_order(keys, m)
        feasible = _Feasibility(scene_ids, centers, per_scene_cap, exclusion_radius)
        if method == "kcenter":
            chosen = _kcenter(pool, scores, np.asarray(embeddings), k, feasible, diversity)
        else:
            chosen = _greedy(pool, k, feasible)
        if len(chosen) == k or m == n:
            return np.asarray(chosen, dtype=np.int64)
        m = min(n, 4 * m)


def top_order(keys: np.ndarray, m: int) -> np.ndarray:
    """Indices of the ``m`` largest keys, best first, ties by lower index (exact, deterministic).

    Partitions instead of sorting the whole array: O(P + m log m).
    """
    n = len(keys)
    candidates: np.ndarray
    if m >= n:
        candidates = np.arange(n)
    else:
        threshold = keys[np.argpartition(-keys, m - 1)[:m]].min()
        candidates = np.flatnonzero(keys >= threshold)  # every tie at the threshold, for exactness
    order = candidates[np.lexsort((candidates, -keys[candidates]))]
    return order[:m]


class _Feasibility:
    """Per-scene caps and the spatial exclusion radius, checked as patches are taken."""

    def __init__(
        self,
        scene_ids: np.ndarray | None,
        centers: np.ndarray | None,
        cap: int | None,
        radius: float,
    ) -> None:
        self.scene_ids = None if cap is None else np.asarray(scene_ids)
        self.centers = None if radius <= 0 else np.asarray(centers, dtype=np.float64)
        self.cap, self.radius = cap, radius
        self.per_scene: dict[object, int] = {}
        self.taken: list[int] = []

    def __len__(self) -> int:
        return len(self.taken)

    def allows(self, i: int) -> bool:
        if self.cap is not None and self.scene_ids is not None:
            if self.per_scene.get(self.scene_ids[i].item(), 0) >= self.cap:
                return False
        if self.centers is not None and self.taken:
            distances = np.hypot(*(self.centers[self.taken] - self.centers[i]).T)
            return bool(distances.min() >= self.radius)
        return True

    def take(self, i: int) -> bool:
        """Take patch ``i`` if the constraints allow it; whether it was taken."""
        if not self.allows(i):
            return False
        if self.scene_ids is not None:
            scene = self.scene_ids[i].item()
            self.per_scene[scene] = self.per_scene.get(scene, 0) + 1
        self.taken.append(i)
        return True


def _greedy(pool: np.ndarray, k: int, feasible: _Feasibility) -> list[int]:
    """Best first, skipping what the constraints forbid."""
    for i in pool:
        if len(feasible) == k:
            break
        feasible.take(int(i))
    return feasible.taken


def _kcenter(
    pool: np.ndarray,
    scores: np.ndarray,
    embeddings: np.ndarray,
    k: int,
    feasible: _Feasibility,
    diversity: float,
) -> list[int]:
    """Greedy k-center over the pool: maximise ``(1 - diversity) * score + diversity * distance``
    (both scaled to [0, 1] within the pool; distance to the nearest chosen patch)."""
    s = scores[pool]
    spread = s.max() - s.min()
    s = (s - s.min()) / spread if spread > 0 else np.ones_like(s)
    x = embeddings[pool].astype(np.float64)
    nearest = np.zeros(len(pool))  # no patch chosen yet: the first pick is by score alone
    open_ = np.ones(len(pool), dtype=bool)
    scale = 1.0
    while len(feasible) < k and open_.any():
        objective = np.where(open_, (1.0 - diversity) * s + diversity * nearest / scale, -np.inf)
        j = int(np.argmax(objective))
        open_[j] = False
        if not feasible.take(int(pool[j])):
            continue
        distance = np.linalg.norm(x - x[j], axis=1)
        if len(feasible) == 1:
            nearest, scale = distance, max(float(distance.max()), 1e-12)
        else:
            np.minimum(nearest, distance, out=nearest)
    return feasible.taken


def _power_keys(scores: np.ndarray, beta: float, seed: int | np.random.Generator | None) -> np.ndarray:
    """Gumbel-top-k keys: the top k of ``beta * log(score) + Gumbel`` is a sample of k without
    replacement with probabilities proportional to ``score ** beta``."""
    keys = np.random.default_rng(seed).gumbel(size=len(scores))
    if beta > 0:  # beta = 0: uniform (and 0 * log 0 would be NaN)
        with np.errstate(divide="ignore"):
            keys += beta * np.log(scores)
    return keys


def _check(
    scores: np.ndarray,
    k: int,
    scene_ids: np.ndarray | None,
    centers: np.ndarray | None,
    embeddings: np.ndarray | None,
    per_scene_cap: int | None,
    exclusion_radius: float,
    method: str,
    power_beta: float,
    pool_factor: int,
    diversity: float,
) -> None:
    """Every argument of :func:`select_batch` checked, each error naming the argument."""
    _check_scores(scores, k)
    _check_shapes(len(scores), scene_ids, centers, embeddings)
    _check_constraints(scene_ids, centers, per_scene_cap, exclusion_radius)
    _check_method(scores, embeddings, method, power_beta, pool_factor, diversity)


def _check_scores(scores: np.ndarray, k: int) -> None:
    if scores.ndim != 1:
        raise ValueError(f"scores must be one value per patch (1-D), found shape {scores.shape}")
    n = len(scores)
    if n == 0:
        raise ValueError("the pool is empty: no scores to select from")
    if not np.isfinite(scores).all():
        raise ValueError(f"scores must be finite; {int((~np.isfinite(scores)).sum())} of {n} are not")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"k must be a positive integer, found {k!r}")
    if k > n:
        raise ValueError(f"k={k} is larger than the pool of {n} patches; ask for at most {n}")


def _check_shapes(n: int, scene_ids: np.ndarray | None, centers: np.ndarray | None,
                  embeddings: np.ndarray | None) -> None:
    if scene_ids is not None and np.shape(scene_ids) != (n,):
        raise ValueError(f"scene_ids must have shape ({n},), one per score, found {np.shape(scene_ids)}")
    if centers is not None and np.shape(centers) != (n, 2):
        raise ValueError(f"centers must have shape ({n}, 2), one row per score, found {np.shape(centers)}")
    if embeddings is not None and (np.ndim(embeddings) != 2 or len(embeddings) != n):
        raise ValueError(f"embeddings must have shape ({n}, C), one row per score, found {np.shape(embeddings)}")


def _check_constraints(scene_ids: np.ndarray | None, centers: np.ndarray | None, per_scene_cap: int | None,
                       exclusion_radius: float) -> None:
    if per_scene_cap is not None:
        if per_scene_cap < 1:
            raise ValueError(f"per_scene_cap must be at least 1 (or None), found {per_scene_cap}")
        if scene_ids is None:
            raise ValueError("per_scene_cap needs scene_ids")
    if exclusion_radius < 0:
        raise ValueError(f"exclusion_radius must be >= 0, found {exclusion_radius}")
    if exclusion_radius > 0 and centers is None:
        raise ValueError("exclusion_radius > 0 needs centers")


def _check_method(scores: np.ndarray, embeddings: np.ndarray | None, method: str, power_beta: float,
                  pool_factor: int, diversity: float) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    if method == "kcenter" and embeddings is None:
        raise ValueError("method 'kcenter' needs embeddings; pass them or use method 'greedy' or 'power'")
    if method == "power":
        if power_beta < 0:
            raise ValueError(f"power_beta must be >= 0, found {power_beta}")
        if (scores < 0).any():
            raise ValueError("power sampling needs non-negative scores (probability ~ score ** beta)")
    if pool_factor < 1:
        raise ValueError(f"pool_factor must be at least 1, found {pool_factor}")
    if not 0.0 <= diversity <= 1.0:
        raise ValueError(f"diversity must be in [0, 1], found {diversity}")
