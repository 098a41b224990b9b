"""Crowns on real forest: no two crowns of a cache overlap, across tiles and within one, and edges are smooth.

The bundled OSBS sample, mirrored into a 2 x 2 mosaic (800 x 800 px at 0.1 m: the
forest runs on across each mirror seam), predicted by the bundled model in small
tiles so that many tile borders cross crowns.
"""

from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from osgeo import ogr

from engine.run.predict import predict
from engine.settings import Job
from tests.rasters import assert_same_cache, snapshot

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "resources" / "sample" / "OSBS_029.tif"
TILE_PX, OVERLAP_PX = 160, 48  # 7 x 7 tiles on the mosaic
OVERLAP_TOLERANCE_M2 = 0.01


@pytest.fixture(scope="module")
def forest(tmp_path_factory) -> Path:
    with rasterio.open(SAMPLE) as src:
        img, profile = src.read(), src.profile
    mosaic = np.concatenate([np.concatenate([img, img[:, :, ::-1]], axis=2),
                             np.concatenate([img[:, ::-1, :], img[:, ::-1, ::-1]], axis=2)], axis=1)
    profile.update(width=mosaic.shape[2], height=mosaic.shape[1])
    path = tmp_path_factory.mktemp("forest") / "osbs_mirrored.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(mosaic)
    return path


def job(forest, cache_dir, **kwargs) -> Job:
    return Job(image=forest, cache_dir=cache_dir, tile_size_px=TILE_PX, overlap_px=OVERLAP_PX, **kwargs)


@pytest.fixture(scope="module")
def clean(forest, tmp_path_factory) -> Path:
    cache_dir = tmp_path_factory.mktemp("clean") / "c"
    result = predict(job(forest, cache_dir))
    assert result.done == result.total == 49
    return cache_dir


def crowns_of(cache_dir, name="crowns.shp") -> tuple[np.ndarray, list[int]]:
    ds = ogr.Open(str(Path(cache_dir) / name))  # held while the layer is read: the layer dies with it
    rows = [(bytes(f.GetGeometryRef().ExportToWkb()), f.GetField("tile_id")) for f in ds.GetLayer(0)]
    return shapely.from_wkb([wkb for wkb, _ in rows]), [tile for _, tile in rows]


def overlapping_pairs(polygons: np.ndarray) -> list[tuple[int, int, float]]:
    mine, other = shapely.STRtree(polygons).query(polygons, predicate="intersects")
    pairs = mine < other
    mine, other = mine[pairs], other[pairs]
    shared = shapely.area(shapely.intersection(polygons[mine], polygons[other]))
    big = shared > OVERLAP_TOLERANCE_M2
    return list(zip(mine[big].tolist(), other[big].tolist(), shared[big].round(3).tolist()))


def right_angles(polygons: np.ndarray) -> np.ndarray:
    """For each vertex of every exterior ring, whether it turns by 90 degrees (within 5)."""
    turns = []
    for ring in shapely.get_exterior_ring(polygons):
        xy = shapely.get_coordinates(ring)[:-1]
        into, out = xy - np.roll(xy, 1, axis=0), np.roll(xy, -1, axis=0) - xy
        cos = (into * out).sum(axis=1) / (np.linalg.norm(into, axis=1) * np.linalg.norm(out, axis=1))
        turns.append(np.abs(cos) < np.cos(np.radians(85)))
    return np.concatenate(turns)


def test_no_two_crowns_overlap_across_or_within_tiles(clean):
    polygons, tiles = crowns_of(clean)
    assert len(polygons) > 150 and len(set(tiles)) > 30  # real forest over most tiles
    assert shapely.is_valid(polygons).all()
    assert overlapping_pairs(polygons) == []
    # Touching crowns of different tiles exist: the seams were cut, not left as gaps of a tile's width.
    mine, other = shapely.STRtree(polygons).query(polygons, predicate="dwithin", distance=0.05)
    assert any(tiles[i] != tiles[j] for i, j in zip(mine, other))


def test_crown_edges_are_smooth_not_pixel_staircases(clean):
    polygons, _ = crowns_of(clean)
    turns = right_angles(polygons)
    # Pixel-traced outlines turn by 90 degrees at nearly every vertex (74 % on this forest before).
    assert turns.mean() < 0.15
    # Each crown's area stays the area the model drew: the smoothing moves edges by under half a pixel.
    areas = shapely.area(polygons)
    # The model's 5 m² minimum crown, less what a neighbour of another tile kept at the seam: tiles
    # on the CRS lattice meet at the minimum overlap, so a crown can lose a sliver on two sides.
    assert areas.min() >= 3.5


@pytest.mark.usefixtures("per_tile_commits")
@pytest.mark.parametrize("vector_format", ["shp", "gpkg"])
def test_a_resumed_run_cuts_its_seams_as_the_uninterrupted_run(forest, clean, tmp_path, vector_format):
    reference = clean
    if vector_format != "shp":
        reference = tmp_path / "clean"
        predict(job(forest, reference, vector_format=vector_format))
    name = f"crowns.{vector_format}"
    seen = []
    first = predict(job(forest, tmp_path / "c", vector_format=vector_format),
                    progress=lambda p: p.tile_id and seen.append(p.tile_id), cancelled=lambda: len(seen) >= 20)
    assert first.state == "cancelled" and 20 <= first.done < 49
    assert predict(job(forest, tmp_path / "c", vector_format=vector_format)).state == "complete"
    assert_same_cache(snapshot(tmp_path / "c", name), snapshot(reference, name))
    resumed, clean_run = crowns_of(tmp_path / "c", name), crowns_of(reference, name)
    assert shapely.to_wkb(resumed[0]).tolist() == shapely.to_wkb(clean_run[0]).tolist()  # to the last bit
    assert overlapping_pairs(crowns_of(tmp_path / "c", name)[0]) == []
