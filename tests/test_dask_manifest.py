"""Country-sized manifests: a checkpoint stands for the lines it covers, and never for a line that changed.

Whatever a checkpoint makes faster, ``read_manifest`` must answer exactly what reading
every line answers: the same header, tiles, trusted length and dropped lines.
"""

import json
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from engine.cache import manifest
from engine.cache.manifest import CHECKPOINT_NAME, MANIFEST_NAME, TileRecords, read_manifest
from engine.cache.status import cache_status
from engine.run.predict import predict
from engine.settings import Job
from tests.clusters import ROOT
from tests.onnx_models import passthrough_model
from tests.rasters import assert_same_cache, snapshot, speckled_image, write_raster


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """36 tiles (12 skipped: a nodata band across the image), and the clean cache."""
    tmp = tmp_path_factory.mktemp("manifest")
    img = speckled_image(80, seed=3)
    img[:, 60:250, :] = 0  # nodata: whole tiles are skipped
    image = write_raster(tmp / "img.tif", img, nodata=0)
    model = passthrough_model(tmp / "m.onnx", tile_size_px=64, overlap_px=16)
    predict(Job(image=image, cache_dir=tmp / "clean", model=model))
    return tmp, image, model, snapshot(tmp / "clean")


@pytest.fixture
def small_steps(monkeypatch):
    """Checkpoints every 5 tiles, line offsets every 4 lines: the small run behaves as a huge one does."""
    monkeypatch.setattr(manifest, "CHECKPOINT_EVERY", 5)
    monkeypatch.setattr(manifest, "OFFSET_STRIDE", 4)


def every_line(cache_dir, tmp_path):
    """``read_manifest`` of a copy of the cache without its checkpoint: every line parsed."""
    copy = tmp_path / f"copy_{cache_dir.name}"
    shutil.rmtree(copy, ignore_errors=True)
    copy.mkdir()
    shutil.copyfile(cache_dir / MANIFEST_NAME, copy / MANIFEST_NAME)
    return read_manifest(copy)


def assert_same_state(a, b):
    assert a.header == b.header
    assert (a.good_bytes, a.dropped_lines) == (b.good_bytes, b.dropped_lines)
    assert list(a.tiles) == list(b.tiles)
    assert [t.cache_files for t in a.tiles] == [t.cache_files for t in b.tiles]
    assert (a.skipped, a.features_end) == (b.skipped, b.features_end)
    assert list(a.tiles.semantic_files()) == list(b.tiles.semantic_files())


def test_a_checkpoint_reads_as_every_line_does(scene, tmp_path, small_steps):
    tmp, image, model, clean = scene
    cache = tmp_path / "c"
    predict(Job(image=image, cache_dir=cache, model=model), cancelled=iter([False] * 23 + [True] * 99).__next__)
    checkpoint = json.loads((cache / CHECKPOINT_NAME).read_text())
    state = read_manifest(cache)
    assert checkpoint["tiles"] == len(state.tiles) == 23  # written on close, over every committed line
    assert isinstance(state.tiles, TileRecords) and state.skipped > 0
    assert_same_state(state, every_line(cache, tmp_path))
    # Random access and slices across line blocks and the checkpoint's end, as the cache's users read them.
    everything = list(every_line(cache, tmp_path).tiles)
    assert state.tiles[-1] == everything[-1] and state.tiles[9] == everything[9]
    assert state.tiles[3:18] == everything[3:18] and state.tiles[21:] == everything[21:]
    predict(Job(image=image, cache_dir=cache, model=model))
    assert_same_cache(snapshot(cache), clean)


@pytest.mark.parametrize("damage", ["digit", "line", "torn_tail", "garbage_tail", "cut", "bad_checkpoint",
                                    "stale_checkpoint"])
def test_a_checkpoint_never_stands_for_changed_bytes(scene, tmp_path, small_steps, damage):
    tmp, image, model, clean = scene
    cache = tmp_path / "c"
    predict(Job(image=image, cache_dir=cache, model=model), cancelled=iter([False] * 28 + [True] * 99).__next__)
    path = cache / MANIFEST_NAME
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    if damage == "digit":  # still JSON, and out of step: every line from there is redone
        lines[8] = lines[8].replace(b'"features_end": ', b'"features_end": 1', 1)
    elif damage == "line":
        lines[12] = b"not json at all\n"
    elif damage == "torn_tail":
        lines.append(b'{"tile_id": 29, "bbox": [0')
    elif damage == "garbage_tail":
        lines += [b'{"tile_id": 29}\n', b"\x00\x00\n"]
    elif damage == "cut":
        lines = lines[:20] + [lines[20][:10]]
    elif damage == "bad_checkpoint":
        (cache / CHECKPOINT_NAME).write_text('{"format": "tcd-manifest-checkpoint", "version": 1, "tiles": 5')
    elif damage == "stale_checkpoint":  # a line edited into another valid line: the checkpoint is another file's
        lines[5] = lines[5].replace(b'"features": ', b'"features":  ', 1)
    path.write_bytes(b"".join(lines))
    assert_same_state(read_manifest(cache), every_line(cache, tmp_path))
    if damage != "stale_checkpoint":  # (an edited valid line stays committed, checkpoint or not)
        predict(Job(image=image, cache_dir=cache, model=model))
        assert_same_cache(snapshot(cache), clean)


DRIVER = textwrap.dedent(
    """
    import sys
    from engine.cache import manifest
    from engine.run.predict import predict
    from engine.settings import Job
    manifest.CHECKPOINT_EVERY, manifest.OFFSET_STRIDE = 3, 4
    predict(Job(image=sys.argv[1], cache_dir=sys.argv[2], model=sys.argv[3]),
            progress=lambda p: print(p.done, flush=True))
    """
)


def test_sigkill_between_checkpoints_then_resume_equals_a_clean_run(scene, tmp_path, small_steps):
    tmp, image, model, clean = scene
    cache = tmp_path / "c"
    for after in (4, 13, 26, 31):
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(image), str(cache), str(model)], cwd=ROOT,
                                stdout=subprocess.PIPE, text=True)
        for line in proc.stdout:
            if int(line) >= after:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=60)
        proc.stdout.close()
        status = cache_status(cache)
        assert status.done >= after
        assert_same_state(read_manifest(cache), every_line(cache, tmp_path))
    predict(Job(image=image, cache_dir=cache, model=model))
    assert_same_cache(snapshot(cache), clean)


@pytest.mark.usefixtures("per_tile_commits")
def test_a_lost_confidence_file_under_a_checkpoint_is_still_found(scene, tmp_path, small_steps):
    tmp, image, model, clean = scene
    cache = tmp_path / "c"
    predict(Job(image=image, cache_dir=cache, model=model))
    total = json.loads((cache / CHECKPOINT_NAME).read_text())["tiles"]
    assert total == cache_status(tmp / "clean").total == 36
    lost = next(tile_id for tile_id, _ in read_manifest(cache).tiles.semantic_files() if tile_id > 6)
    (cache / "semantic" / f"tile_{lost:06d}.tif").unlink()
    redone = []
    predict(Job(image=image, cache_dir=cache, model=model), progress=lambda p: p.tile_id and redone.append(p.tile_id))
    assert redone == list(range(lost, total + 1))
    assert_same_cache(snapshot(cache), clean)
