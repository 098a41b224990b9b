"""Resume, refusal of foreign caches, rollback of uncommitted writes, and the lock."""

import json
import shutil

import numpy as np
import pytest
from osgeo import ogr

from engine.cache.lock import CacheLock
from engine.cache.status import cache_layers, cache_status
from engine.errors import CacheCorruptError, CacheLockedError, CacheMismatchError
from engine.run.predict import predict
from engine.settings import Job
from tests.onnx_models import passthrough_model
from tests.rasters import assert_same_cache, snapshot, write_raster

N_TILES = 16  # 208 x 198 px: 4 x 4 windows of 64 px overlapping by at least 16


@pytest.fixture
def image(tmp_path):
    rng = np.random.default_rng(1)
    img = np.full((3, 198, 208), 20, np.uint8)
    for _ in range(25):
        c, r, s = rng.integers(0, 145), rng.integers(0, 135), rng.integers(10, 16)
        img[:, r : r + s, c : c + s] = 230
    return write_raster(tmp_path / "img.tif", img)


@pytest.fixture
def clean(tmp_path, image, model):
    predict(Job(image=image, cache_dir=tmp_path / "clean", model=model))
    return snapshot(tmp_path / "clean")


@pytest.mark.usefixtures("per_tile_commits")
def test_cancel_then_resume_predicts_only_missing_tiles(tmp_path, image, model, clean):
    seen = []

    def cancel_after_five():
        return len(seen) >= 5

    first = predict(Job(image=image, cache_dir=tmp_path / "c", model=model),
                    progress=lambda p: p.tile_id and seen.append(p.tile_id), cancelled=cancel_after_five)
    assert first.state == "cancelled" and 5 <= first.done < N_TILES
    status = cache_status(tmp_path / "c")
    assert status.state == "partial" and status.done == first.done and status.total == N_TILES
    assert [layer.style for layer in cache_layers(tmp_path / "c")] == ["confidence", "crowns"]
    resumed = []
    second = predict(Job(image=image, cache_dir=tmp_path / "c", model=model),
                     progress=lambda p: p.tile_id and resumed.append(p.tile_id))
    assert second.state == "complete"
    assert resumed == list(range(first.done + 1, N_TILES + 1))
    assert_same_cache(snapshot(tmp_path / "c"), clean)
    # A complete cache resumes to a no-op.
    again = []
    predict(Job(image=image, cache_dir=tmp_path / "c", model=model), progress=lambda p: p.tile_id and again.append(1))
    assert again == [] and cache_status(tmp_path / "c").state == "complete"


def test_other_image_model_or_settings_are_refused(tmp_path, image, model):
    predict(Job(image=image, cache_dir=tmp_path / "c", model=model))
    other = write_raster(tmp_path / "other.tif", np.zeros((3, 150, 160), np.uint8))
    with pytest.raises(CacheMismatchError, match="another image"):
        predict(Job(image=other, cache_dir=tmp_path / "c", model=model))
    other_model = passthrough_model(tmp_path / "other.onnx", band_index=1, tile_size_px=64, overlap_px=16)
    with pytest.raises(CacheMismatchError, match="another model"):
        predict(Job(image=image, cache_dir=tmp_path / "c", model=other_model))
    with pytest.raises(CacheMismatchError, match="tile size"):
        predict(Job(image=image, cache_dir=tmp_path / "c", model=model, tile_size_px=128))
    with pytest.raises(CacheMismatchError, match="outputs"):
        predict(Job(image=image, cache_dir=tmp_path / "c", model=model, outputs={"semantic"}))
    result = predict(Job(image=other, cache_dir=tmp_path / "c", model=model, overwrite=True))
    assert result.state == "complete" and result.features == 0


def test_moved_cache_still_resumes(tmp_path, image, model, clean):
    predict(Job(image=image, cache_dir=tmp_path / "c", model=model), cancelled=iter([False] * 3 + [True] * 99).__next__)
    shutil.move(tmp_path / "c", tmp_path / "moved")
    assert cache_status(tmp_path / "moved").image_path == image
    predict(Job(image=image, cache_dir=tmp_path / "moved", model=model))
    assert_same_cache(snapshot(tmp_path / "moved"), clean)


def test_uncommitted_writes_are_rolled_back(tmp_path, image, model, clean):
    cache = tmp_path / "c"
    predict(Job(image=image, cache_dir=cache, model=model), cancelled=iter([False] * 6 + [True] * 99).__next__)
    done = cache_status(cache).done
    # What a crash mid-tile leaves: a torn manifest line, a stray tile file, crowns of no committed tile.
    with open(cache / "tiles.jsonl", "ab") as f:
        f.write(b'{"tile_id": 99, "bbox": [0, 0')
    (cache / "semantic" / "tile_000099.tif").write_bytes(b"half a tiff")
    ds = ogr.Open(str(cache / "crowns.shp"), 1)
    layer = ds.GetLayer(0)
    for i in range(3):
        feat = ogr.Feature(layer.GetLayerDefn())
        feat.SetField("id", 1000 + i)
        feat.SetGeometry(ogr.CreateGeometryFromWkt("POLYGON ((0 0, 1 0, 1 1, 0 0))"))
        layer.CreateFeature(feat)
    ds = None
    assert cache_status(cache).done == done  # the torn line never counts
    predict(Job(image=image, cache_dir=cache, model=model))
    assert not (cache / "semantic" / "tile_000099.tif").exists()
    assert_same_cache(snapshot(cache), clean)


@pytest.mark.usefixtures("per_tile_commits")
def test_garbage_manifest_lines_redo_the_tiles_after_them(tmp_path, image, model, clean):
    cache = tmp_path / "c"
    predict(Job(image=image, cache_dir=cache, model=model))
    lines = (cache / "tiles.jsonl").read_text().splitlines(keepends=True)
    lines[5] = "garbage that is not json\n"
    (cache / "tiles.jsonl").write_text("".join(lines))
    assert cache_status(cache).done == 4
    redone = []
    predict(Job(image=image, cache_dir=cache, model=model), progress=lambda p: p.tile_id and redone.append(p.tile_id))
    assert redone == list(range(5, N_TILES + 1))
    assert_same_cache(snapshot(cache), clean)


def test_manifest_paths_outside_the_cache_are_refused(tmp_path, image, model):
    cache = tmp_path / "c"
    predict(Job(image=image, cache_dir=cache, model=model))
    lines = (cache / "tiles.jsonl").read_text().splitlines(keepends=True)
    record = json.loads(lines[1])
    record["cache_files"]["semantic"] = "../../etc/passwd"
    lines[1] = json.dumps(record) + "\n"
    (cache / "tiles.jsonl").write_text("".join(lines))
    with pytest.raises(CacheCorruptError, match="outside the cache folder"):
        predict(Job(image=image, cache_dir=cache, model=model))
    assert (tmp_path / "img.tif").exists()


def test_second_writer_is_refused_and_told_who_holds_the_lock(tmp_path, image, model):
    (tmp_path / "c").mkdir()
    with CacheLock(tmp_path / "c"):
        with pytest.raises(CacheLockedError, match=r"process \d+ on"):
            predict(Job(image=image, cache_dir=tmp_path / "c", model=model))
        assert cache_status(tmp_path / "c").state == "running"
    assert predict(Job(image=image, cache_dir=tmp_path / "c", model=model)).state == "complete"


def test_missing_semantic_tile_is_redone(tmp_path, image, model, clean):
    cache = tmp_path / "c"
    predict(Job(image=image, cache_dir=cache, model=model))
    (cache / "semantic" / "tile_000010.tif").unlink()
    predict(Job(image=image, cache_dir=cache, model=model))
    assert_same_cache(snapshot(cache), clean)


def _drop_plan_from_header(cache):
    lines = (cache / "tiles.jsonl").read_text().splitlines(keepends=True)
    header = json.loads(lines[0])
    del header["plan"]  # as written before tile plans were recorded
    (cache / "tiles.jsonl").write_text(json.dumps(header) + "\n" + "".join(lines[1:]))


@pytest.mark.usefixtures("per_tile_commits")
def test_cache_of_the_margin_plan_is_continued_with_its_own_plan(tmp_path, image, model, monkeypatch):
    import engine.run.predict as run_predict
    from engine.tiling.grid import PLAN_MARGIN

    with monkeypatch.context() as m:  # an engine from before the edge-aware plan
        m.setattr(run_predict, "LATEST_PLAN", PLAN_MARGIN)
        predict(Job(image=image, cache_dir=tmp_path / "clean", model=model))
        seen = []
        first = predict(Job(image=image, cache_dir=tmp_path / "c", model=model),
                        progress=lambda p: p.tile_id and seen.append(p.tile_id), cancelled=lambda: len(seen) >= 5)
    assert first.state == "cancelled" and first.total == 25  # 48 px cores, edge windows hanging over
    _drop_plan_from_header(tmp_path / "c")
    second = predict(Job(image=image, cache_dir=tmp_path / "c", model=model))
    assert second.state == "complete" and second.total == 25
    assert_same_cache(snapshot(tmp_path / "c"), snapshot(tmp_path / "clean"))
    # Started afresh, the same folder gets the current plan.
    assert predict(Job(image=image, cache_dir=tmp_path / "c", model=model, overwrite=True)).total == N_TILES


def test_cache_of_an_unknown_plan_is_refused(tmp_path, image, model):
    cache = tmp_path / "c"
    predict(Job(image=image, cache_dir=cache, model=model))
    lines = (cache / "tiles.jsonl").read_text().splitlines(keepends=True)
    header = json.loads(lines[0])
    header["plan"] = 99
    (cache / "tiles.jsonl").write_text(json.dumps(header) + "\n" + "".join(lines[1:]))
    with pytest.raises(CacheMismatchError, match="another version of the tiling") as err:
        predict(Job(image=image, cache_dir=cache, model=model))
    assert err.value.what == "plan"


def test_grouped_commits_make_the_same_cache_and_report_each_group(tmp_path, image, model, clean, monkeypatch):
    from engine.cache.store import Cache

    monkeypatch.setattr(Cache, "group_s", 3600.0)
    monkeypatch.setattr(Cache, "group_tiles", 5)
    reported = []
    result = predict(Job(image=image, cache_dir=tmp_path / "c", model=model),
                     progress=lambda p: p.tile_id and reported.append(p.tile_id))
    assert result.state == "complete" and result.done == N_TILES
    assert reported == [5, 10, 15, 16]  # groups of five, then the last tile flushed at the end
    assert_same_cache(snapshot(tmp_path / "c"), clean)


def test_failed_group_commit_keeps_earlier_groups_and_resumes(tmp_path, image, model, clean, monkeypatch):
    from engine.cache.manifest import ManifestWriter
    from engine.cache.store import Cache
    from engine.errors import CacheWriteError

    monkeypatch.setattr(Cache, "group_s", 3600.0)
    monkeypatch.setattr(Cache, "group_tiles", 4)
    real_commit, calls = ManifestWriter.commit, []

    def commit_then_fail(self, records):
        calls.append(len(records))
        if len(calls) == 3:  # the third group's files are written, its manifest lines are not
            raise CacheWriteError("Cannot write the manifest: No space left on device.", tmp_path / "c")
        return real_commit(self, records)

    monkeypatch.setattr(ManifestWriter, "commit", commit_then_fail)
    with pytest.raises(CacheWriteError):
        predict(Job(image=image, cache_dir=tmp_path / "c", model=model))
    assert cache_status(tmp_path / "c").done == 8  # two groups of four committed, the third not
    monkeypatch.setattr(ManifestWriter, "commit", real_commit)
    resumed = []
    second = predict(Job(image=image, cache_dir=tmp_path / "c", model=model),
                     progress=lambda p: p.tile_id and resumed.append(p.tile_id))
    assert second.state == "complete" and resumed[-1] == N_TILES
    assert_same_cache(snapshot(tmp_path / "c"), clean)
