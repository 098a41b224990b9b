"""The confidence mosaic of big caches: overviews kept as tiles commit, repaired after crashes, and a VRT
tree whose refresh touches a few files however many tiles the cache holds.

The tests shrink the mosaic's geometry (16 px overview tiles, leaves of 2 x 2 overview
tiles or 64 source pixels, inner nodes of 2 x 2) so that small images get several
overview levels of many tiles and VRT trees several nodes deep.
"""

import json
import os
import re

import numpy as np
import pytest

import engine.cache.semantic as semantic
from engine.cache.vrt import MosaicGeometry
from engine.run.predict import predict
from engine.settings import Job
from tests.big_cache import semantic_cache, write_synthetic_cache
from tests.rasters import overview_oracle, read_confidence, read_overviews, speckled_image, write_raster

TILE_PX = 16


@pytest.fixture
def small_mosaic(monkeypatch):
    monkeypatch.setattr(semantic, "mosaic_geometry",
                        lambda core_px: MosaicGeometry(tile_px=TILE_PX, leaf_tiles=2, leaf0_px=64, fanout=2))
    monkeypatch.setattr(semantic.GeotiffSemanticCache, "refresh_interval_s", 0.0)  # refresh after every commit
    monkeypatch.setattr(semantic.GeotiffSemanticCache, "refresh_share", float("inf"))


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """300 x 300 px: 36 tiles with the 64 px / 16 px test model; five overview levels."""
    img = speckled_image(150, seed=3, sizes=(6, 20), values=(60, 255))
    return write_raster(tmp_path_factory.mktemp("img") / "img.tif", img)


def committed_cores(cache) -> list:
    lines = (cache / "tiles.jsonl").read_text().splitlines()[1:]
    return [rec["bbox"] for rec in map(json.loads, lines) if rec["cache_files"].get("semantic")]


def assert_overviews_hold_committed_tiles(cache, levels: int = 5) -> None:
    want = overview_oracle(read_confidence(cache), committed_cores(cache), TILE_PX)
    got = read_overviews(cache)
    assert len(got) == len(want) == levels
    for level, (g, w) in enumerate(zip(got, want), start=1):
        np.testing.assert_array_equal(g, w, err_msg=f"overview level {level}")


def listed_and_stored(cache) -> tuple[set, set]:
    """Overview tiles the mosaic's VRTs list, and those on disk."""
    listed = set()
    for vrt in [cache / "confidence.vrt", *(cache / "mosaic").rglob("*.vrt")]:
        for src in re.findall(r'relativeToVRT="1">([^<]+)<', vrt.read_text()):
            listed.add(os.path.normpath(vrt.parent / src))
    return listed, {os.path.normpath(p) for p in (cache / "mosaic").rglob("*.tif")}


@pytest.fixture
def clean(tmp_path, image, model, small_mosaic):
    predict(Job(image=image, cache_dir=tmp_path / "clean", model=model, outputs={"semantic"}))
    return read_confidence(tmp_path / "clean"), read_overviews(tmp_path / "clean")


def assert_same_mosaic(cache, clean) -> None:
    np.testing.assert_array_equal(read_confidence(cache), clean[0])
    got = read_overviews(cache)
    assert len(got) == len(clean[1]) == 5
    for level, (g, w) in enumerate(zip(got, clean[1]), start=1):
        np.testing.assert_array_equal(g, w, err_msg=f"overview level {level}")
    listed, stored = listed_and_stored(cache)
    assert stored <= listed  # superseded overview tiles were deleted


@pytest.mark.usefixtures("per_tile_commits")
def test_overviews_hold_the_committed_tiles_after_every_refresh(tmp_path, image, model, small_mosaic):
    cache = tmp_path / "c"
    checked = []

    def check(progress):
        if progress.tile_id is not None and progress.tile_id % 4 in (1, 2):
            assert_overviews_hold_committed_tiles(cache)
            checked.append(progress.tile_id)

    result = predict(Job(image=image, cache_dir=cache, model=model, outputs={"semantic"}), progress=check)
    assert result.state == "complete" and len(checked) >= 18
    assert_overviews_hold_committed_tiles(cache)
    listed, stored = listed_and_stored(cache)
    assert stored and stored <= listed


@pytest.mark.usefixtures("per_tile_commits")
@pytest.mark.parametrize("cap_bytes", [None, 1])
def test_tiles_waiting_for_the_mosaic_are_bounded_in_memory(tmp_path, image, model, small_mosaic, monkeypatch,
                                                            cap_bytes):
    """However long the mosaic waits between refreshes by time, past ``pending_bytes_max`` of
    decoded tiles it refreshes at once: the tiles waiting for it never pile up."""
    monkeypatch.setattr(semantic.GeotiffSemanticCache, "refresh_interval_s", 1e9)
    if cap_bytes is not None:
        monkeypatch.setattr(semantic.GeotiffSemanticCache, "pending_bytes_max", cap_bytes)
    cache, behind = tmp_path / "c", []

    def check(progress):
        if progress.tile_id is not None:
            state_file = cache / "mosaic" / "state.json"
            through = json.loads(state_file.read_text())["through"] if state_file.is_file() else 0
            behind.append(progress.done - through)

    predict(Job(image=image, cache_dir=cache, model=model, outputs={"semantic"}), progress=check)
    if cap_bytes is None:  # time alone: no refresh until the run closes
        assert max(behind) >= 30
    else:  # every tile is over a 1-byte cap: the mosaic holds each committed tile at once
        assert max(behind) == 0


class Crash(BaseException):
    """Stands for a SIGKILL: nothing after it runs, and no code catches it."""


@pytest.mark.slow
@pytest.mark.parametrize("crash_at", [1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144])
def test_a_crash_at_any_write_of_the_mosaic_is_repaired_when_the_cache_opens(tmp_path, image, model, clean,
                                                                             monkeypatch, crash_at):
    """Crash at the n-th file the mosaic writes (its state, a tile's level-1 file, an overview tile, a VRT),
    then open and resume."""
    import engine.cache.mosaic_pass as mosaic_pass

    writes = []

    def crashing(real):
        def write(*args, **kwargs):
            writes.append(args[0])
            if len(writes) == crash_at:
                raise Crash()
            return real(*args, **kwargs)

        return write

    monkeypatch.setattr(semantic, "write_file", crashing(semantic.write_file))
    monkeypatch.setattr(mosaic_pass, "write_geotiff", crashing(mosaic_pass.write_geotiff))
    monkeypatch.setattr(mosaic_pass, "write_synced", crashing(mosaic_pass.write_synced))  # level-1 files
    job = Job(image=image, cache_dir=tmp_path / "c", model=model, outputs={"semantic"})
    with pytest.raises(Crash):
        predict(job)
    predict(job, cancelled=lambda: True)  # only opens (and repairs) the cache
    if committed_cores(tmp_path / "c"):
        assert_overviews_hold_committed_tiles(tmp_path / "c")
    assert predict(job).state == "complete"
    assert len(writes) > crash_at + 50  # the resumed runs wrote the mosaic on, through the same functions
    assert_same_mosaic(tmp_path / "c", clean)


@pytest.mark.slow
def test_manifest_cut_short_below_the_mosaic_is_repaired(tmp_path, image, model, clean, small_mosaic):
    """Garbage in line 6 drops tiles 5.. from the manifest that the mosaic already shows."""
    cache = tmp_path / "c"
    job = Job(image=image, cache_dir=cache, model=model, outputs={"semantic"})
    predict(job)
    lines = (cache / "tiles.jsonl").read_text().splitlines(keepends=True)
    lines[5] = "garbage\n"
    (cache / "tiles.jsonl").write_text("".join(lines))
    predict(job, cancelled=lambda: True)
    assert len(committed_cores(cache)) == 4
    assert_overviews_hold_committed_tiles(cache)
    predict(job)
    assert_same_mosaic(cache, clean)


@pytest.mark.slow
def test_lost_tile_file_is_redone_in_the_mosaic_too(tmp_path, image, model, clean, small_mosaic):
    cache = tmp_path / "c"
    job = Job(image=image, cache_dir=cache, model=model, outputs={"semantic"})
    predict(job)
    (cache / "semantic" / "tile_000030.tif").unlink()
    predict(job, cancelled=lambda: True)
    assert len(committed_cores(cache)) == 29
    assert_overviews_hold_committed_tiles(cache)
    predict(job)
    assert_same_mosaic(cache, clean)


def test_a_mosaic_from_before_overviews_is_rebuilt(tmp_path, image, model, clean, small_mosaic):
    """A cache whose mosaic has no state (an older version's, or a lost one) gets it all rebuilt."""
    cache = tmp_path / "c"
    job = Job(image=image, cache_dir=cache, model=model, outputs={"semantic"})
    predict(job, cancelled=iter([False] * 20 + [True] * 99).__next__)
    (cache / "mosaic" / "state.json").unlink()
    predict(job)
    assert_same_mosaic(cache, clean)


def files_state(folder) -> dict:
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def sources_per_vrt(folder) -> list[int]:
    vrts = [folder / "confidence.vrt", *folder.rglob("mosaic/**/*.vrt")]
    return [p.read_text().count("<SimpleSource>") for p in vrts]


@pytest.mark.parametrize("side", [24, 48])
def test_a_refresh_touches_the_same_few_files_however_big_the_cache(tmp_path, side, monkeypatch):
    """``side`` x ``side`` tiles of 8 px: the mosaic is a tree of VRTs none of which lists more than a
    leaf's worth of sources, and committing one more tile rewrites the same small number of files
    (its leaves, one overview tile per level, the state) whether the cache holds 576 tiles or 2,304."""
    monkeypatch.setattr(semantic, "mosaic_geometry",
                        lambda core_px: MosaicGeometry(tile_px=TILE_PX, leaf_tiles=2, leaf0_px=32, fanout=2))
    cache = tmp_path / "c"
    records, width, height = write_synthetic_cache(cache, side, side, 8)
    mosaic = semantic_cache(cache, width, height)
    mosaic.open(records[:-1])
    counts = sources_per_vrt(cache)
    assert max(counts) <= 4 * 4  # a leaf of 32 px holds 4 x 4 tiles of 8 px; inner nodes 2 x 2 children
    assert sum(counts) >= len(records) - 1
    before = files_state(cache)
    mosaic.committed(records[-1], (cache / records[-1].cache_files["semantic"]).read_bytes())
    mosaic.refresh()
    after = files_state(cache)
    touched = sorted(str(p.relative_to(cache)) for p in after if before.get(p) != after[p])
    levels = len(read_overviews(cache))
    assert levels == {24: 4, 48: 5}[side]
    # state.json, the tile's level-0 leaf, and at each overview level its tile and that tile's leaf
    assert len(touched) == 2 + 2 * levels, touched
    assert_overviews_hold_committed_tiles(cache, levels)
    np.testing.assert_array_equal(read_confidence(cache)[0], _expected_full(records, width, height))


def _expected_full(records, width, height) -> np.ndarray:
    from tests.big_cache import tile_value

    full = np.zeros((height, width), np.uint8)
    side = round(len(records) ** 0.5)
    for r in records:
        x0, y0, x1, y1 = r.bbox
        value = tile_value(x0 // 8, y0 // 8)
        yy, xx = np.mgrid[0 : y1 - y0, 0 : x1 - x0]
        w, h = x1 - x0, y1 - y0
        disc = (xx - w / 2) ** 2 + (yy - h / 2) ** 2 < (min(w, h) / 3) ** 2
        full[y0:y1, x0:x1] = np.where(disc, 255 - value, value)
    assert side * side == len(records)
    return full


def test_a_torn_mosaic_file_is_rebuilt(tmp_path, image, model, clean, small_mosaic):
    """A power cut can leave a file written after the last durable state empty: the repair that needs it
    fails to read it and rebuilds the whole mosaic instead."""
    cache = tmp_path / "c"
    job = Job(image=image, cache_dir=cache, model=model, outputs={"semantic"})
    predict(job)
    state_path = cache / "mosaic" / "state.json"
    state = json.loads(state_path.read_text())
    x0, y0 = json.loads((cache / "tiles.jsonl").read_text().splitlines()[-1])["bbox"][:2]
    leaf = cache / "mosaic" / "L1" / f"n0_{x0 // 2 // TILE_PX // 2}_{y0 // 2 // TILE_PX // 2}.vrt"
    os.chmod(leaf, 0o644)
    leaf.write_bytes(b"")  # the last tile's level-1 leaf, torn
    state.update(through=state["through"] - 3, writing=state["gen"] + 1)  # the intent of the refresh it was in
    os.chmod(state_path, 0o644)
    state_path.write_text(json.dumps(state))
    predict(job, cancelled=lambda: True)
    assert_same_mosaic(cache, clean)


def commit_run(cache_dir, image, model, *, mosaic_thread: bool, each=None) -> None:
    """Commit a run's tiles as a cluster's committing process does (outputs made beforehand)."""
    from engine.cache.store import Cache
    from engine.run.predict import prepare
    from engine.run.tile import TileProcessor

    prepared = prepare(Job(image=image, cache_dir=cache_dir, model=model, outputs={"semantic"}))
    processor = TileProcessor(prepared.plan, prepared.model)
    outputs = [processor.process(tile) for tile in prepared.tiles]
    processor.close()
    with Cache.open(cache_dir, prepared.header, prepared.plan.info, mosaic_thread=mosaic_thread) as cache:
        for out in outputs:
            cache.commit(out)
            if each is not None:
                each(cache)


@pytest.mark.usefixtures("per_tile_commits")
def test_overviews_kept_on_their_own_thread_are_the_same(tmp_path, image, model, clean):
    """A cluster's committing process keeps the overviews on a second thread: refreshes overlap commits
    (and are skipped while one runs), and the closed mosaic is the one a single thread writes."""
    import threading

    seen = set()
    commit_run(tmp_path / "c", image, model, mosaic_thread=True,
               each=lambda cache: seen.update(t.name for t in threading.enumerate()))
    assert "tcd-mosaic" in seen
    assert_same_mosaic(tmp_path / "c", clean)
    assert_overviews_hold_committed_tiles(tmp_path / "c")
    listed, stored = listed_and_stored(tmp_path / "c")
    assert stored and stored <= listed


@pytest.mark.usefixtures("per_tile_commits")
def test_a_failed_background_refresh_stops_the_run_with_one_sentence(tmp_path, image, model, clean, monkeypatch):
    """The disk fills while the mosaic's thread writes: the committing thread raises it, and the next
    run repairs the mosaic."""
    import errno
    import threading

    import engine.cache.mosaic_pass as mosaic_pass
    from engine.errors import CacheWriteError

    write_geotiff = mosaic_pass.write_geotiff

    def full_disk_on_the_mosaic_thread(*args, **kwargs):
        if threading.current_thread().name == "tcd-mosaic":
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_geotiff(*args, **kwargs)

    monkeypatch.setattr(mosaic_pass, "write_geotiff", full_disk_on_the_mosaic_thread)
    with pytest.raises(CacheWriteError) as caught:
        commit_run(tmp_path / "c", image, model, mosaic_thread=True)
    assert str(caught.value).startswith("The disk is full"), str(caught.value)
    monkeypatch.setattr(mosaic_pass, "write_geotiff", write_geotiff)
    predict(Job(image=image, cache_dir=tmp_path / "c", model=model, outputs={"semantic"}))
    assert_same_mosaic(tmp_path / "c", clean)
