"""What a cache holds, for the CLI's ``status`` and the plugin's runs panel and layers.

Reads only the manifest (and the lock), never the rasters or the crowns, so it
is fast on any cache. Its only package is jsonlines (for the manifest); without it
the status says which package is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import TCDError
from .lock import holder
from .manifest import read_manifest, safe_relpath


@dataclass(frozen=True)
class CacheStatus:
    """A cache's state. ``state`` is ``empty``, ``partial``, ``complete`` or ``running``."""

    cache_dir: Path
    image_path: Path | None
    model_name: str
    model_path: str
    done: int
    total: int
    skipped: int
    features: int
    outputs: tuple[str, ...]
    state: str
    locked_by: str | None
    error: str | None = None


@dataclass(frozen=True)
class CacheLayer:
    """A map layer a cache offers: ``style`` names a QML file in ``resources/styles``."""

    path: Path
    kind: str  # "raster" | "vector"
    name: str
    style: str  # "confidence" | "crowns"
    output: str  # "semantic" | "instances"
    layer_name: str | None = None


def _image_path(cache_dir: Path, header: dict) -> Path | None:
    # Prefer the path relative to the cache, so a cache moved together with its image still finds it.
    rel = header.get("image_relpath")
    if rel:
        candidate = (cache_dir / rel).resolve()
        if candidate.exists():
            return candidate
    image = header.get("image")
    return Path(image) if image else None


def cache_status(cache_dir: str | Path) -> CacheStatus:
    """Summarise a cache folder; an unreadable manifest gives state ``empty`` with ``error`` set."""
    cache_dir = Path(cache_dir)
    locked_by = holder(cache_dir)
    try:
        state = read_manifest(cache_dir)
    except TCDError as exc:
        return CacheStatus(cache_dir, None, "", "", 0, 0, 0, 0, (), "running" if locked_by else "empty",
                           locked_by, str(exc))
    except ModuleNotFoundError as exc:  # a QGIS whose packages are not installed yet
        return CacheStatus(cache_dir, None, "", "", 0, 0, 0, 0, (), "running" if locked_by else "empty",
                           locked_by, f"The Python package '{exc.name}' is missing; install the plugin's dependencies.")
    header = state.header or {}
    total = int(header.get("tiles_total", 0))
    done = len(state.tiles)
    if locked_by:
        name = "running"
    elif state.header is None:
        name = "empty"
    elif done >= total:
        name = "complete"
    else:
        name = "partial"
    model = header.get("model", {})
    return CacheStatus(
        cache_dir=cache_dir,
        image_path=_image_path(cache_dir, header) if header else None,
        model_name=model.get("name", ""),
        model_path=model.get("path", ""),
        done=done,
        total=total,
        skipped=state.skipped,
        features=state.features_end,
        outputs=tuple(header.get("outputs", ())),
        state=name,
        locked_by=locked_by,
    )


def cache_layers(cache_dir: str | Path) -> list[CacheLayer]:
    """Layers to show for a cache (only files that exist): confidence mosaic first, then crowns."""
    cache_dir = Path(cache_dir)
    header = read_manifest(cache_dir).header or {}
    layers = []
    mosaic = header.get("semantic_mosaic")
    if mosaic and safe_relpath(cache_dir, mosaic).is_file():
        layers.append(CacheLayer(safe_relpath(cache_dir, mosaic), "raster", "canopy confidence", "confidence",
                                 "semantic"))
    vector = header.get("vector_file")
    if vector and safe_relpath(cache_dir, vector).is_file():
        layer_name = "crowns" if vector.endswith(".gpkg") else None
        layers.append(CacheLayer(safe_relpath(cache_dir, vector), "vector", "crowns", "crowns", "instances",
                                 layer_name))
    return layers
