"""engine.postprocess.crowns.delineate_crowns on synthetic canopy and centre maps (0.1 m pixels)."""

from __future__ import annotations

import numpy as np

from engine.postprocess.crowns import block_mean, delineate_crowns

GSD_M = 0.1
PARAMS = {"gsd_m": GSD_M, "seg_thresh": 0.5, "centre_thresh": 0.3, "peak_min_distance_m": 1.0, "min_crown_area_m2": 1.0}


def disc(shape, cy, cx, r):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def gaussian(shape, cy, cx, sigma):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))


def test_two_touching_crowns_are_split_at_the_right_place():
    shape = (120, 160)
    # A big and a small crown, overlapping: one canopy patch, two centre peaks.
    big, small = disc(shape, 60, 55, 35), disc(shape, 60, 108, 22)
    canopy = (big | small).astype(np.float32) * 0.9
    centres = np.maximum(gaussian(shape, 60, 55, 8), gaussian(shape, 60, 108, 5)).astype(np.float32)
    labels = delineate_crowns(canopy, centres, **PARAMS)
    assert labels.max() == 2
    big_label, small_label = labels[60, 55], labels[60, 108]
    assert {big_label, small_label} == {1, 2}
    # Every canopy pixel belongs to a crown, and no crown reaches outside the canopy.
    assert np.array_equal(labels > 0, canopy > 0.5)
    # Each disc's own pixels (away from the overlap) go to its own crown.
    only_big, only_small = big & ~disc(shape, 60, 108, 30), small & ~disc(shape, 60, 55, 43)
    assert np.all(labels[only_big] == big_label)
    assert np.all(labels[only_small] == small_label)


def test_crown_without_a_centre_still_becomes_one_crown():
    shape = (100, 100)
    canopy = np.zeros(shape, np.float32)
    canopy[disc(shape, 30, 30, 15)] = 0.8
    canopy[disc(shape, 70, 70, 15)] = 0.8
    # Only the first crown has a centre peak; the second must not be lost nor claimed by the first.
    centres = gaussian(shape, 30, 30, 4).astype(np.float32)
    labels = delineate_crowns(canopy, centres, **PARAMS)
    assert labels.max() == 2
    assert labels[30, 30] != labels[70, 70]
    assert np.all(labels[disc(shape, 70, 70, 15)] == labels[70, 70])


def test_weak_centres_and_close_peaks_do_not_split():
    shape = (100, 100)
    canopy = disc(shape, 50, 50, 30).astype(np.float32)
    # Two peaks 0.6 m apart (closer than peak_min_distance_m) and one weak peak below centre_thresh.
    centres = np.maximum(gaussian(shape, 50, 47, 3), gaussian(shape, 50, 53, 3))
    centres = np.maximum(centres, 0.2 * gaussian(shape, 30, 50, 3)).astype(np.float32)
    labels = delineate_crowns(canopy, centres, **PARAMS)
    assert labels.max() == 1


def test_min_crown_area_drops_small_crowns():
    shape = (80, 80)
    canopy = np.zeros(shape, np.float32)
    canopy[disc(shape, 20, 20, 12)] = 0.9  # ~4.5 m2
    canopy[disc(shape, 60, 60, 4)] = 0.9  # ~0.5 m2
    centres = np.zeros(shape, np.float32)
    assert delineate_crowns(canopy, centres, **PARAMS).max() == 1
    assert delineate_crowns(canopy, centres, **{**PARAMS, "min_crown_area_m2": 0.1}).max() == 2


def test_empty_canopy_and_determinism():
    shape = (64, 64)
    assert not delineate_crowns(np.zeros(shape, np.float32), np.ones(shape, np.float32), **PARAMS).any()
    rng = np.random.default_rng(3)
    canopy = rng.random(shape).astype(np.float32)
    centres = rng.random(shape).astype(np.float32)
    first = delineate_crowns(canopy, centres, **PARAMS)
    again = delineate_crowns(canopy.copy(), centres.copy(), **PARAMS)
    assert first.dtype == np.int32
    assert np.array_equal(first, again)
    # Labels are numbered 1..n without gaps.
    assert set(np.unique(first)) - {0} == set(range(1, first.max() + 1))


def test_block_mean_gives_back_a_coarse_map_and_pads_partial_blocks():
    coarse = np.arange(12, dtype=np.float32).reshape(3, 4)
    fine = np.repeat(np.repeat(coarse, 4, 0), 4, 1)
    np.testing.assert_array_equal(block_mean(fine, 4), coarse)
    partial = block_mean(np.ones((5, 6), np.float32), 4)
    np.testing.assert_allclose(partial, [[1.0, 0.5], [0.25, 0.125]])
