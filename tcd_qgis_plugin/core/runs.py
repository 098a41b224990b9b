"""What this QGIS profile remembers between sessions, kept in QgsSettings.

* known caches: folders this profile predicted into or added with "Open cache…";
* the job of each run started here, so that Resume repeats it exactly (the
  engine refuses to resume a cache with other settings);
* the last failure of each cache, shown as "failed" until a run succeeds;
* recently used model files.
"""

from __future__ import annotations

import json
from pathlib import Path

from qgis.core import QgsSettings

from tcd_qgis_plugin.engine.cache.manifest import read_manifest
from tcd_qgis_plugin.engine.cache.status import cache_status
from tcd_qgis_plugin.engine.errors import CacheCorruptError
from tcd_qgis_plugin.engine.settings import Job
from tcd_qgis_plugin.engine.worker import job_from_json, job_to_json

PREFIX = "tcd/"
MAX_RECENT_MODELS = 8


def _key(path) -> str:
    return str(Path(path).resolve())


class RunRegistry:
    """Known caches, their jobs and failures; recent models. All paths absolute."""

    def __init__(self, settings: QgsSettings | None = None):
        self._settings = settings or QgsSettings()

    def _load(self, name: str, default):
        raw = self._settings.value(PREFIX + name, "")
        try:
            value = json.loads(raw) if raw else default
        except ValueError:
            return default
        return value if isinstance(value, type(default)) else default

    def _store(self, name: str, value) -> None:
        self._settings.setValue(PREFIX + name, json.dumps(value))

    # -- caches -----------------------------------------------------------
    def caches(self) -> list[Path]:
        return [Path(p) for p in self._load("caches", [])]

    def add_cache(self, cache_dir) -> None:
        caches = self._load("caches", [])
        key = _key(cache_dir)
        if key not in caches:
            self._store("caches", caches + [key])

    def forget_cache(self, cache_dir) -> None:
        key = _key(cache_dir)
        self._store("caches", [p for p in self._load("caches", []) if p != key])
        for name in ("jobs", "failures"):
            table = self._load(name, {})
            if table.pop(key, None) is not None:
                self._store(name, table)

    # -- jobs ---------------------------------------------------------------
    def remember_job(self, job: Job) -> None:
        self.add_cache(job.cache_dir)
        jobs = self._load("jobs", {})
        data = job_to_json(job)
        data["overwrite"] = False  # a resumed run must never start over
        jobs[_key(job.cache_dir)] = data
        self._store("jobs", jobs)

    def job(self, cache_dir) -> Job | None:
        data = self._load("jobs", {}).get(_key(cache_dir))
        return None if data is None else job_from_json(data)

    # -- failures -----------------------------------------------------------
    def set_failure(self, cache_dir, message: str | None) -> None:
        failures = self._load("failures", {})
        key = _key(cache_dir)
        if message:
            failures[key] = message
        else:
            failures.pop(key, None)
        self._store("failures", failures)

    def failure(self, cache_dir) -> str | None:
        return self._load("failures", {}).get(_key(cache_dir))

    # -- models ---------------------------------------------------------------
    def recent_models(self) -> list[Path]:
        return [Path(p) for p in self._load("recent_models", [])]

    def add_recent_model(self, path) -> None:
        key = _key(path)
        models = [key] + [p for p in self._load("recent_models", []) if p != key]
        self._store("recent_models", models[:MAX_RECENT_MODELS])


def job_from_cache(cache_dir) -> Job:
    """The job that made a cache, rebuilt from its manifest (for caches made elsewhere).

    The resolved tiling settings are passed as explicit overrides, so the engine
    finds them identical to the cache's fingerprint and resumes.
    """
    cache_dir = Path(cache_dir)
    header = read_manifest(cache_dir).header
    if header is None:
        raise CacheCorruptError(f"{cache_dir.name} holds no run to resume.")
    settings = header.get("fingerprints", {}).get("settings", {})
    status = cache_status(cache_dir)
    model = header.get("model", {}).get("path")
    if status.image_path is None or not model:
        raise CacheCorruptError(f"The manifest of {cache_dir.name} does not name its image and model.")
    return Job(
        image=status.image_path,
        cache_dir=cache_dir,
        model=Path(model),
        outputs=frozenset(settings.get("outputs") or status.outputs),
        tile_size_px=settings.get("tile_size_px"),
        overlap_px=settings.get("overlap_px"),
        gsd_m=settings.get("gsd_m"),
        vector_format=settings.get("vector_format", "shp"),
        aoi_wkt=settings.get("aoi_wkt"),
        canopy_height=settings.get("canopy_height"),
    )
