"""The semantic cache: canopy confidence GeoTIFFs on the source grid, and their VRT mosaic.

One tiled, compressed uint8 GeoTIFF per tile core under ``semantic/`` (one band
per class, 0–255 for confidence 0–1) and a VRT mosaic, ``confidence.vrt``,
replaced atomically so it is a valid raster at every moment.
"""

from __future__ import annotations

import time
from pathlib import Path
from xml.sax.saxutils import escape

from .durable import disk_error, write_atomic
from .manifest import TileRecord

SEMANTIC_DIR = "semantic"
VRT_NAME = "confidence.vrt"


class GeotiffSemanticCache:
    """Per-tile confidence GeoTIFFs plus an always-valid VRT mosaic."""

    def __init__(self, cache_dir: Path, width: int, height: int, crs_wkt: str, transform, class_names):
        self.cache_dir = Path(cache_dir)
        self.dir = self.cache_dir / SEMANTIC_DIR
        self.width, self.height = width, height
        self.crs_wkt = crs_wkt
        self.transform = transform
        self.class_names = tuple(class_names)
        self._last_vrt = 0.0
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise disk_error(f"the folder {self.dir}", exc) from exc

    @staticmethod
    def tile_name(tile_id: int) -> str:
        return f"{SEMANTIC_DIR}/tile_{tile_id:06d}.tif"

    def write_tile(self, tile_id: int, encoded: bytes) -> str:
        """Write a tile's encoded confidence GeoTIFF durably; returns its path relative to the cache."""
        rel = self.tile_name(tile_id)
        try:
            write_atomic(self.cache_dir / rel, encoded)
        except OSError as exc:
            raise disk_error(f"the confidence tile {rel}", exc) from exc
        return rel

    def vrt_xml(self, records: list[TileRecord]) -> str:
        a, b, c, d, e, f = self.transform
        sources = []
        for r in records:
            rel = r.cache_files.get("semantic")
            if not rel:
                continue
            x0, y0, x1, y1 = r.bbox
            sources.append((escape(rel), x0, y0, x1 - x0, y1 - y0))
        bands = []
        for i, name in enumerate(self.class_names, start=1):
            parts = [f'  <VRTRasterBand dataType="Byte" band="{i}">',
                     f"    <Description>{escape(name)}</Description>"]
            for rel, x, y, w, h in sources:
                parts.append(
                    f'    <SimpleSource><SourceFilename relativeToVRT="1">{rel}</SourceFilename>'
                    f"<SourceBand>{i}</SourceBand>"
                    f'<SourceProperties RasterXSize="{w}" RasterYSize="{h}" DataType="Byte" '
                    f'BlockXSize="{min(w, 256)}" BlockYSize="{min(h, 256)}"/>'
                    f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
                    f'<DstRect xOff="{x}" yOff="{y}" xSize="{w}" ySize="{h}"/></SimpleSource>'
                )
            parts.append("  </VRTRasterBand>")
            bands.append("\n".join(parts))
        return (
            f'<VRTDataset rasterXSize="{self.width}" rasterYSize="{self.height}">\n'
            f"  <SRS>{escape(self.crs_wkt)}</SRS>\n"
            f"  <GeoTransform>{c!r}, {a!r}, {b!r}, {f!r}, {d!r}, {e!r}</GeoTransform>\n"
            + "\n".join(bands)
            + "\n</VRTDataset>\n"
        )

    def write_vrt(self, records: list[TileRecord], *, force: bool = True, min_interval_s: float = 2.0) -> None:
        """Replace the mosaic with one listing ``records``; skipped if written < ``min_interval_s`` ago.

        Rewriting the whole VRT for every tile would cost O(tiles²) bytes on a large
        run, so during a run it is refreshed at most every couple of seconds.
        """
        now = time.monotonic()
        if not force and now - self._last_vrt < min_interval_s:
            return
        try:
            # Read-only: GDAL (e.g. QGIS computing statistics) would otherwise write its
            # stale in-memory copy back over the mosaic when it closes the file.
            write_atomic(self.cache_dir / VRT_NAME, self.vrt_xml(records).encode(), read_only=True)
        except OSError as exc:
            raise disk_error(f"the mosaic {VRT_NAME}", exc) from exc
        self._last_vrt = now

    def rollback(self, committed: list[TileRecord]) -> int:
        """Delete tile files no committed record names; returns how many were removed."""
        keep = {r.cache_files.get("semantic") for r in committed}
        removed = 0
        if self.dir.is_dir():
            for p in self.dir.iterdir():
                rel = f"{SEMANTIC_DIR}/{p.name}"
                if rel not in keep:
                    p.unlink(missing_ok=True)
                    removed += 1
        return removed
