"""`al-loop next-round`: pool scoring (cached per model version), diverse choice, records, handout."""

import csv
import json

import numpy as np
import pytest
from sqlalchemy import func, select

from al_loop.ingest import ingest_hkh_tile, ingest_synthetic_scene
from al_loop.rounds import next_round, pool_patches, query_regions
from al_loop.sampling import cost
from al_loop.synthetic import make_scene
from al_loop.training_run import run_training
from al_loop.workspace import init_workspace, open_store
from db.models import Label, PatchScore, Round, RoundPatch
from db.queries import labelled_training_patch_count, unpack_mask
from tests.test_training import _small


def labelled_and_pool(root, pool_dir, database_url=None, pool_height=512, mc_samples=4):
    """A small-model workspace (quicklooks on) with a labelled synthetic scene (to train on) and
    an unlabelled one (the pool), 16 patches each at the default pool height; and its store."""
    ws = _small(init_workspace(root, database_url=database_url))
    ws.config.ingest.quicklooks = True
    ws.config.model.mc_samples = mc_samples
    ws.config.sampling.exclusion_radius = 0
    ws.config.training.promotion_margin = 1.0  # every 2-epoch candidate is promoted: these tests are not about the gate
    store = open_store(ws)
    ingest_synthetic_scene(ws, store, size=512, seed=0, quiet=True)
    unlabelled = make_scene(pool_dir, height=pool_height, seed=5, name="LE07_145039_20081012")
    ingest_hkh_tile(ws, store, unlabelled.image, quiet=True)
    return ws, store


@pytest.fixture
def pool_ws(tmp_path, database_url):
    ws, store = labelled_and_pool(tmp_path / "ws", tmp_path / "pool", database_url)
    yield ws, store
    store.dispose()


def test_cold_start_round_uses_priors_and_is_handed_out(pool_ws):
    ws, store = pool_ws
    result = next_round(ws, store, size=4, strategy="combined", quiet=True)
    assert result.strategy == "prior" and result.model_version is None
    assert any("cold start" in note for note in result.notes)
    assert len(result.patches) == 4 and result.scored == 16
    rows = list(csv.DictReader(open(result.handout / "manifest.csv")))
    assert [int(r["patch_id"]) for r in rows] == [p.patch_id for p in result.patches]
    assert {"glacier", "debris", "cloud"} <= set(rows[0])
    for row in rows:
        looks = row["quicklooks"].split(";")
        assert len(looks) == 5  # every view of the labeling page (al_loop.io.views)
        for look in looks:
            assert (result.handout / look).is_file()
        assert row["why_chosen"].startswith("chosen by prior: ")
    footprints = json.loads((result.handout / "footprints.geojson").read_text())
    lon, lat = footprints["features"][0]["geometry"]["coordinates"][0][0]
    assert 80 < lon < 100 and 20 < lat < 40  # WGS84, in the Himalaya


def test_rounds_never_hand_out_a_patch_twice_and_scores_are_cached_per_version(pool_ws):
    ws, store = pool_ws
    run_training(ws, store, quiet=True)
    first = next_round(ws, store, size=5, strategy="bald", quiet=True)
    assert first.model_version == "v1" and first.scored == 16
    second = next_round(ws, store, size=5, strategy="bald", quiet=True)
    assert second.scored == 0  # cached: nothing re-scored
    assert not {p.patch_id for p in first.patches} & {p.patch_id for p in second.patches}
    with store.session() as session:
        assert session.scalar(select(func.count(Round.id))) == 2
        assert session.scalar(select(func.count(RoundPatch.id))) == 10
        assert session.scalar(select(func.count(PatchScore.id)).where(PatchScore.model_version_id.is_not(None))) == 16
    run_training(ws, store, parent_name="v1", quiet=True)  # v2 champion: v1's scores are not reused
    third = next_round(ws, store, size=3, strategy="combined", quiet=True)
    assert third.model_version == "v2" and third.scored == 6


def test_bad_requests_are_clear_and_record_nothing(pool_ws):
    ws, store = pool_ws
    with pytest.raises(ValueError, match="unknown strategy|valid"):
        next_round(ws, store, size=3, strategy="clever", quiet=True)
    with pytest.raises(ValueError, match=r"round size \(--size, sampling.round_size\) must be at least 1, found 0"):
        next_round(ws, store, size=0, strategy="random", quiet=True)
    whole = next_round(ws, store, size=17, strategy="random", quiet=True)  # more than the pool: all of it
    assert len(whole.patches) == 16 and "the pool holds 16 patches" in " ".join(whole.notes)
    with pytest.raises(LookupError, match="pool is empty.*al-loop ingest synthetic --unlabelled"):
        next_round(ws, store, size=1, strategy="random", quiet=True)
    with store.session() as session:
        assert session.scalar(select(func.count(Round.id))) == 1


def test_warm_up_chooses_at_random_until_enough_training_patches_are_labelled(pool_ws):
    ws, store = pool_ws
    run_training(ws, store, quiet=True)
    with store.session() as session:
        labelled = labelled_training_patch_count(session)
    assert 0 < labelled < 16
    ws.config.sampling.warmup_labels = labelled + 1
    warm = next_round(ws, store, size=3, strategy="bald", quiet=True)
    assert warm.strategy == "random"
    assert any("warm-up" in note and "sampling.warmup_labels" in note for note in warm.notes)
    ws.config.sampling.warmup_labels = labelled
    assert next_round(ws, store, size=3, strategy="bald", quiet=True).strategy == "bald"


def test_region_queries_pick_a_window_where_the_champion_is_unsure(pool_ws):
    ws, store = pool_ws
    run_training(ws, store, quiet=True)
    chosen = next_round(ws, store, size=2, strategy="combined", quiet=True)
    ids = [p.patch_id for p in chosen.patches]
    regions = query_regions(ws, store, ids, "combined", 0.25)
    assert sorted(regions) == sorted(ids)
    side = ws.config.ingest.patch_size // 2
    for region in regions.values():
        assert region.row1 - region.row0 == side and region.col1 - region.col0 == side
        assert 0 <= region.row0 and region.row1 <= ws.config.ingest.patch_size


def test_rounds_say_their_expected_expert_time_and_cost_aware_rounds_prefer_quick_patches(pool_ws):
    ws, store = pool_ws
    run_training(ws, store, quiet=True)
    prior = next_round(ws, store, size=2, strategy="combined", quiet=True)
    assert any("expected expert time" in n and "prior: no lead times yet" in n for n in prior.notes)
    with store.session() as session:  # experts were slow on outlines: 10 s + 2 s per boundary pixel
        for label in session.scalars(select(Label).where(Label.status == "accepted").limit(6)):
            edges = cost.edge_pixels(unpack_mask(label.mask, 128, 128))
            label.details = {**label.details, "lead_time": 10.0 + 2.0 * edges}
    ws.config.sampling.cost_aware, ws.config.sampling.method = True, "greedy"
    aware = next_round(ws, store, size=3, strategy="combined", quiet=True)
    assert any("fitted on 6 lead times" in n for n in aware.notes)
    with store.session() as session:
        chosen = [p.components["expected_seconds"] for p in session.scalars(
            select(RoundPatch).join(Round).where(Round.number == aware.number))]
        later = next_round(ws, store, size=len(pool_patches(session)), strategy="random", quiet=True)
    rest = [p.components["expected_seconds"] for p in later.patches]
    # quicker than the others on average (score still counts: not every pick is among the quickest)
    assert np.mean(chosen) < np.mean(rest)
