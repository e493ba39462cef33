"""``runedit.plan_review``: what a review call changes in a structure's box, computed in numpy alone (no run folder,
no file): removals by id, the size / probability / keep-largest rules, kept candidates spared from the rules, and
the decisions and counts the commit step writes. The files around it are tested in test_review.py."""
from __future__ import annotations

import numpy as np
import pytest

from AtlasSegLib.geometry import Grid
from AtlasSegLib.postprocess import ranked_components
from AtlasSegLib.review import KEPT, REMOVED, candidates_of
from AtlasSegLib.runedit import ReviewPlan, plan_review

START = (10, 20, 30)  # the box's corner on the input grid (i, j, k): seeds are full-grid indices
SPACING = (1.0, 1.0, 1.0)  # 1 mm³ voxels: 1000 voxels = 1 ml


def _box():
    """A 20x20x20 box with three blobs of 27 (3³), 125 (5³) and 1000 (10³) voxels, and a map where the small one
    is unlikely (p 0.2), the others likely (p 0.9)."""
    region = np.zeros((20, 20, 20), np.uint8)
    q = np.zeros(region.shape, np.uint8)
    region[1:4, 1:4, 1:4] = 1
    q[1:4, 1:4, 1:4] = 51
    region[1:6, 10:15, 10:15] = 1
    q[1:6, 10:15, 10:15] = 230
    region[8:18, 8:18, 1:11] = 1
    q[8:18, 8:18, 1:11] = 230
    lab = ranked_components(region != 0)
    grid = Grid((20, 20, 20), SPACING, (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    cands = candidates_of(lab, grid, START, q_box=q)
    ids = {c.label: c.id for c in cands}  # size ranks: 1 = the 1000-voxel blob, 3 = the 27-voxel one
    return region, q, lab, cands, ids


def _plan(region, lab, cands, ids, **kw):
    return plan_review(region, lab, cands, ids, start_ijk=START, voxel_mm3=1.0, **kw)


def _voxels_of(plan: ReviewPlan, region, lab, cands, ids, rid) -> int:
    label = next(c.label for c in cands if ids[c.label] == rid)
    return int(np.count_nonzero(plan.mask[lab.labels == label]))


def test_removing_a_candidate_by_id_clears_only_its_voxels_and_leaves_the_input_untouched():
    region, q, lab, cands, ids = _box()
    before = region.copy()
    plan = _plan(region, lab, cands, ids, remove_ids=(2,))
    assert np.array_equal(region, before)  # the plan never writes into the mask it was given
    assert _voxels_of(plan, region, lab, cands, ids, 2) == 0
    assert _voxels_of(plan, region, lab, cands, ids, 1) == 1000 and _voxels_of(plan, region, lab, cands, ids, 3) == 27
    assert plan.result() == {"removed": 1, "kept": 0, "changed_voxels": 125, "spared": 0}
    assert [(c.id, s) for c, s in plan.decisions] == [(2, REMOVED)]


def test_size_rule_removes_small_components_and_records_each_as_removed():
    region, q, lab, cands, ids = _box()
    plan = _plan(region, lab, cands, ids, remove_smaller_ml=0.2)  # 200 voxels: the 27 and 125 go
    assert int(plan.mask.sum()) == 1000
    assert plan.removed == 2 and plan.changed_voxels == 152
    assert sorted(c.id for c, s in plan.decisions if s == REMOVED) == [2, 3]


def test_probability_rule_uses_each_components_highest_probability():
    region, q, lab, cands, ids = _box()
    plan = _plan(region, lab, cands, ids, q=q, remove_below_probability_p=0.5)
    assert plan.removed == 1 and plan.changed_voxels == 27  # only the p 0.2 blob
    assert [c.id for c, _ in plan.decisions] == [3]


def test_kept_candidates_are_spared_by_the_rules_and_counted():
    region, q, lab, cands, ids = _box()
    plan = _plan(region, lab, cands, ids, q=q, keep_ids=(3,), remove_smaller_ml=0.2)
    assert _voxels_of(plan, region, lab, cands, ids, 3) == 27  # kept now: the size rule passes it by
    assert _voxels_of(plan, region, lab, cands, ids, 2) == 0
    assert plan.result() == {"removed": 1, "kept": 1, "changed_voxels": 125, "spared": 1}
    assert [(c.id, s) for c, s in plan.decisions] == [(2, REMOVED), (3, KEPT)]


def test_a_candidate_kept_in_an_earlier_call_is_spared_too():
    region, q, lab, cands, ids = _box()
    decided = {3: {"status": KEPT, "seed_ijk": [0, 0, 0]}}
    plan = _plan(region, lab, cands, ids, q=q, decided=decided, remove_below_probability_p=0.5)
    assert plan.changed_voxels == 0 and plan.removed == 0 and plan.spared == 1
    assert np.array_equal(plan.mask, region)


def test_an_earlier_keep_does_not_protect_a_candidate_removed_by_id_now():
    region, q, lab, cands, ids = _box()
    decided = {3: {"status": KEPT, "seed_ijk": [0, 0, 0]}}
    plan = _plan(region, lab, cands, ids, decided=decided, remove_ids=(3,))
    assert _voxels_of(plan, region, lab, cands, ids, 3) == 0 and plan.changed_voxels == 27


def test_keep_largest_drops_every_smaller_island():
    region, q, lab, cands, ids = _box()
    plan = _plan(region, lab, cands, ids, keep_largest_n=1)
    assert int(plan.mask.sum()) == 1000 and plan.removed == 2


def test_nothing_requested_changes_nothing():
    region, q, lab, cands, ids = _box()
    plan = _plan(region, lab, cands, ids)
    assert plan.result() == {"removed": 0, "kept": 0, "changed_voxels": 0, "spared": 0} and plan.decisions == []
    assert np.array_equal(plan.mask, region) and plan.mask is not region


@pytest.mark.parametrize("rules", [dict(remove_smaller_ml=0.2), dict(keep_largest_n=1)])
def test_rules_apply_after_removals_by_id(rules):
    # A component removed by id is gone before the rules run: it is neither removed twice nor counted twice.
    region, q, lab, cands, ids = _box()
    plan = _plan(region, lab, cands, ids, remove_ids=(2,), **rules)
    assert plan.removed == 2 and sorted(c.id for c, _ in plan.decisions) == [2, 3]
    assert int(plan.mask.sum()) == 1000
