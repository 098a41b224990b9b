"""The instance cache: crown polygons in one Shapefile or GeoPackage layer.

All crowns sit in one layer with ``id`` (unique across the cache), ``score``,
``class``, ``class_idx``, ``tile_id`` and the crowns' measurements and other
attributes (:class:`CrownField`). Crowns are appended tile by tile and synced
before the tile commits. Rolling back to a committed crown count truncates the
files in place, without reading the features.

A Shapefile's field names have at most 10 characters: longer names are stored
under the short names of :data:`SHAPEFILE_NAMES`.
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from osgeo import gdal, ogr, osr

from ..errors import CacheCorruptError, CacheWriteError
from ..postprocess.vectorise import Crown
from ..settings import CROWNS_STEM, VectorFormat
from .durable import disk_error, fsync_dir, fsync_path

ogr.UseExceptions()
osr.UseExceptions()
gdal.UseExceptions()

logger = logging.getLogger(__name__)

LAYER_NAME = CROWNS_STEM
INDEX_MARKER = f"{CROWNS_STEM}.qix.writing"  # exists while the shapefile's .qix is being written


@dataclass(frozen=True)
class CrownField:
    """A column of the crowns layer: OGR type, width and precision (as a DBF needs them)."""

    name: str
    kind: int
    width: int = 0
    precision: int = 0


BASE_FIELDS = (CrownField("id", ogr.OFTInteger64, 18), CrownField("score", ogr.OFTReal, 8, 5),
               CrownField("class", ogr.OFTString, 32), CrownField("class_idx", ogr.OFTInteger, 4),
               CrownField("tile_id", ogr.OFTInteger, 9))
MEASUREMENT_FIELDS = (CrownField("area_m2", ogr.OFTReal, 12, 3), CrownField("perimeter_m", ogr.OFTReal, 12, 3),
                      CrownField("diam_m", ogr.OFTReal, 10, 3))
# With a canopy height raster (engine.postprocess.heights): NULL where it has no valid pixel.
HEIGHT_FIELDS = (CrownField("height_max_m", ogr.OFTReal, 10, 3), CrownField("height_p95_m", ogr.OFTReal, 10, 3),
                 CrownField("height_src", ogr.OFTString, 254))
# Detectors: each box in the source CRS (the envelope of its corners there; axis-aligned
# boxes on a north-up raster are exact), and its rotation in degrees (oriented boxes).
BOX_FIELDS = (CrownField("box_xmin", ogr.OFTReal, 20, 9), CrownField("box_ymin", ogr.OFTReal, 20, 9),
              CrownField("box_xmax", ogr.OFTReal, 20, 9), CrownField("box_ymax", ogr.OFTReal, 20, 9),
              CrownField("box_angle", ogr.OFTReal, 8, 3))
SHAPEFILE_NAMES = {"perimeter_m": "perim_m", "height_max_m": "height_max", "height_p95_m": "height_p95"}


class VectorInstanceCache:
    """Crown polygons in one OGR layer (Shapefile or GeoPackage).

    ``fields`` are the attribute columns after :data:`BASE_FIELDS`, used when the
    file is created; a file made by an older version keeps its own columns, and
    attributes it has no column for are not written.
    """

    format: VectorFormat

    def __init__(self, cache_dir: Path, crs_wkt: str, fields: tuple[CrownField, ...] = MEASUREMENT_FIELDS):
        self.cache_dir = Path(cache_dir)
        self.path = self.cache_dir / self.format.filename
        self.rel = self.path.name
        try:
            if self.path.exists():
                self.ds = ogr.Open(str(self.path), 1)
                self.layer = self.ds.GetLayerByName(LAYER_NAME) or self.ds.GetLayer(0)
            else:
                driver = ogr.GetDriverByName(self.format.driver)
                self.ds = driver.CreateDataSource(str(self.path))
                srs = osr.SpatialReference()
                srs.ImportFromWkt(crs_wkt)
                srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
                self.layer = self.ds.CreateLayer(LAYER_NAME, srs, ogr.wkbPolygon, self.layer_options())
                for f in BASE_FIELDS + tuple(fields):
                    fd = ogr.FieldDefn(self.column(f.name), f.kind)
                    fd.SetWidth(f.width)
                    fd.SetPrecision(f.precision)
                    self.layer.CreateField(fd)
                self.sync()
        except RuntimeError as exc:
            raise CacheCorruptError(f"The crowns file {self.path} cannot be opened or created: {exc}.",
                                    cache_dir, start_afresh_fixes=True) from exc
        if self.layer is None:
            raise CacheCorruptError(f"The crowns file {self.path} holds no layer.", cache_dir, start_afresh_fixes=True)
        self.defn = self.layer.GetLayerDefn()
        # Field indices by column name: setting a field by name makes OGR look the name up each
        # time (most of an append's Python time).
        self._field_index = {self.defn.GetFieldDefn(i).GetName(): i for i in range(self.defn.GetFieldCount())}

    def column(self, name: str) -> str:
        """The layer's column for attribute ``name``."""
        return name

    def layer_options(self) -> list[str]:
        return []

    def count(self) -> int:
        return self.layer.GetFeatureCount()

    def append(self, tiles: list[tuple[int, int, list[Crown]]]) -> None:
        """Append tiles' crowns, given as ``(tile_id, first_id, crowns)``, and sync once for all of them."""
        try:
            self._begin()
            for tile_id, first_id, crowns in tiles:
                for i, crown in enumerate(crowns):
                    self.layer.CreateFeature(self._feature(crown, first_id + i, tile_id))
            self._commit()
            self.sync()
        except (RuntimeError, OSError) as exc:
            raise disk_error(f"crowns to {self.rel}", exc) from exc

    def read(self, first_id: int, last_id: int) -> list[tuple[int, bytes]]:
        """``(tile_id, WKB)`` of the crowns with ids ``first_id`` to ``last_id``, in id order."""
        rows = []
        tile_index = self._field_index["tile_id"]
        for feature in self._features(first_id, last_id):
            rows.append((feature.GetField(tile_index), bytes(feature.GetGeometryRef().ExportToWkb())))
        return rows

    def _features(self, first_id: int, last_id: int):
        # Ids grow with the fid and a rolled-back fid is not used again: the fid bound lets
        # SQLite start at the first crown instead of reading the layer from its start.
        self.layer.SetAttributeFilter(f"fid >= {int(first_id)} AND id >= {int(first_id)} AND id <= {int(last_id)}")
        try:
            yield from sorted(self.layer, key=lambda feature: feature.GetField(self._field_index["id"]))
        finally:
            self.layer.SetAttributeFilter(None)

    def _feature(self, crown: Crown, crown_id: int, tile_id: int) -> ogr.Feature:
        feat = ogr.Feature(self.defn)
        index = self._field_index
        feat.SetField(index["id"], crown_id)
        feat.SetField(index["score"], round(crown.score, 5))
        feat.SetField(index["class"], crown.class_name)
        feat.SetField(index["class_idx"], crown.class_idx)
        feat.SetField(index["tile_id"], tile_id)
        for name, value in crown.attributes.items():
            i = index.get(self.column(name))
            if i is None:
                continue
            if value is None:
                feat.SetFieldNull(i)
            else:
                feat.SetField(i, value)
        feat.SetGeometry(ogr.CreateGeometryFromWkb(crown.wkb))
        return feat

    def _begin(self):
        pass

    def _commit(self):
        pass

    def sync(self) -> None:
        self.layer.SyncToDisk()
        for p in self.files():
            fsync_path(p)

    def files(self) -> list[Path]:
        return [self.path]

    def close(self, *, index: bool = True) -> None:
        """Release the file; ``index`` builds its spatial index if the format keeps one apart (see subclasses)."""
        self.layer = None
        self.ds = None


class ShapefileInstanceCache(VectorInstanceCache):
    """Crowns in a Shapefile, with a ``.qix`` spatial index (GDAL's quadtree, which QGIS reads through GDAL).

    GDAL deletes the ``.qix`` when it appends a crown, and truncation leaves it
    stale, so the index is rebuilt when a run closes (:meth:`close`). While it is
    being written a marker file (:data:`INDEX_MARKER`) exists: a crash mid-way
    leaves no torn index, because opening the cache deletes both (:meth:`truncate`).
    """

    format = VectorFormat.SHAPEFILE

    def close(self, *, index: bool = True) -> None:
        try:
            if index and self.layer is not None and self.count() and not self.path.with_suffix(".qix").exists():
                self._build_index()
        finally:
            super().close()

    def _build_index(self) -> None:
        qix, marker = self.path.with_suffix(".qix"), self.path.with_name(INDEX_MARKER)
        try:
            marker.touch()
            fsync_dir(self.cache_dir)
            self.layer.SyncToDisk()
            self.ds.ExecuteSQL(f"CREATE SPATIAL INDEX ON {self.layer.GetName()}")
            fsync_path(qix)
        except (RuntimeError, OSError) as exc:  # the crowns are intact; QGIS only reads them more slowly
            logger.warning("could not write the spatial index of %s: %s", self.rel, exc)
            qix.unlink(missing_ok=True)
        marker.unlink(missing_ok=True)

    def column(self, name: str) -> str:
        return SHAPEFILE_NAMES.get(name, name)

    def _features(self, first_id: int, last_id: int):
        for fid in range(first_id - 1, last_id):  # a shapefile's fid is its record number, from 0
            yield self.layer.GetFeature(fid)

    def layer_options(self):
        return ["ENCODING=UTF-8"]

    def files(self):
        return [self.path.with_suffix(s) for s in (".shp", ".shx", ".dbf")]

    def sync(self) -> None:
        super().sync()
        # GDAL may report success after a short write (disk full): check the sizes agree.
        n = self.count()
        if n == 0:
            return  # the .dbf header is only written with the first record
        shp, shx, dbf = self.files()
        try:
            with open(shx, "rb") as fx, open(dbf, "rb") as fd:
                fx.seek(100 + 8 * (n - 1))
                offset_words, length_words = struct.unpack(">ii", fx.read(8))
                shp_size = (offset_words + 4 + length_words) * 2  # record header is 4 words
                fd.seek(8)
                header_len, record_len = struct.unpack("<HH", fd.read(4))
            ok = (shx.stat().st_size == 100 + 8 * n
                  and shp.stat().st_size == shp_size
                  and dbf.stat().st_size >= header_len + record_len * n)
        except (OSError, struct.error):
            ok = False
        if not ok:
            raise CacheWriteError(f"Writing crowns to {self.rel} failed (is the disk full?); free space and resume.",
                                  self.cache_dir)

    @staticmethod
    def truncate(path: Path, n_records: int) -> bool:
        """Cut a shapefile to its first ``n_records`` records in place; True if anything changed.

        The records were fsynced before their tiles committed, so they are intact;
        only headers and trailing records written after the last commit need
        repair. Works on the bytes, so a shapefile left inconsistent by a crash
        (e.g. .shp longer than .shx) is repaired without GDAL opening it.
        """
        shp, shx, dbf = (path.with_suffix(s) for s in (".shp", ".shx", ".dbf"))
        qix, marker = path.with_suffix(".qix"), path.with_name(INDEX_MARKER)
        if marker.exists():  # a crash while the index was being written: it may be torn
            qix.unlink(missing_ok=True)
            marker.unlink()
        if n_records == 0:
            # Nothing committed: whatever exists may be half-created, so start the file afresh.
            return _remove_with_sidecars(path, VectorFormat.SHAPEFILE)
        if not (shp.exists() and shx.exists() and dbf.exists()):
            raise CacheCorruptError(
                f"Part of the crowns shapefile {path.name} is missing.", path.parent, start_afresh_fixes=True
            )
        changed = False
        with open(shx, "r+b") as fx, open(shp, "r+b") as fs, open(dbf, "r+b") as fd:
            shx_size = os.fstat(fx.fileno()).st_size
            if (shx_size - 100) // 8 < n_records:
                raise CacheCorruptError(
                    f"The crowns shapefile {path.name} lost committed crowns.", path.parent, start_afresh_fixes=True
                )
            if n_records:
                fx.seek(100 + 8 * (n_records - 1))
                offset_words, length_words = struct.unpack(">ii", fx.read(8))
                shp_end = (offset_words + 4 + length_words) * 2
            else:
                shp_end = 100
            if os.fstat(fs.fileno()).st_size < shp_end:
                raise CacheCorruptError(
                    f"The crowns shapefile {path.name} lost committed crowns.", path.parent, start_afresh_fixes=True
                )
            fd.seek(4)
            dbf_header = fd.read(8)
            if len(dbf_header) < 8:
                raise CacheCorruptError(
                    f"The crowns shapefile {path.name} is damaged.", path.parent, start_afresh_fixes=True
                )
            n_dbf, header_len, record_len = struct.unpack("<IHH", dbf_header)
            dbf_end = header_len + record_len * n_records
            dbf_size = os.fstat(fd.fileno()).st_size
            if dbf_size < dbf_end:
                raise CacheCorruptError(
                    f"The crowns shapefile {path.name} lost committed crowns.", path.parent, start_afresh_fixes=True
                )
            if shx_size != 100 + 8 * n_records or os.fstat(fs.fileno()).st_size != shp_end:
                changed = True
                fx.truncate(100 + 8 * n_records)
                fs.truncate(shp_end)
                for f, size in ((fx, 100 + 8 * n_records), (fs, shp_end)):
                    f.seek(24)
                    f.write(struct.pack(">i", size // 2))
            if n_dbf != n_records or dbf_size not in (dbf_end, dbf_end + 1):
                changed = True
                fd.truncate(dbf_end)
                fd.seek(dbf_end)
                fd.write(b"\x1a")
                fd.seek(4)
                fd.write(struct.pack("<I", n_records))
            if changed:  # unchanged files need no sync: whatever a crash leaves, the next open repairs
                for f in (fx, fs, fd):
                    f.flush()
                    os.fsync(f.fileno())
        if changed:
            qix.unlink(missing_ok=True)  # it indexes removed crowns; rebuilt when the run closes
            # The header's extent may still cover removed crowns; let GDAL recompute it.
            ds = ogr.Open(str(shp), 1)
            ds.ExecuteSQL(f"RECOMPUTE EXTENT ON {shp.stem}")
            ds = None
        return changed


class GeoPackageInstanceCache(VectorInstanceCache):
    format = VectorFormat.GEOPACKAGE

    def layer_options(self):
        return ["FID=fid", "SPATIAL_INDEX=YES"]

    def _begin(self):
        self.layer.StartTransaction()

    def _commit(self):
        self.layer.CommitTransaction()

    def sync(self) -> None:
        # SQLite commits are durable on their own (journal + fsync).
        self.layer.SyncToDisk()

    @staticmethod
    def truncate(path: Path, n_records: int) -> bool:
        if n_records == 0:
            # Nothing committed: a file killed while being created may not even open.
            return _remove_with_sidecars(path, VectorFormat.GEOPACKAGE)
        if not path.exists():
            raise CacheCorruptError(f"The crowns file {path.name} is missing.", path.parent, start_afresh_fixes=True)
        ds = ogr.Open(str(path), 1)
        layer = ds.GetLayerByName(LAYER_NAME)
        count = layer.GetFeatureCount() if layer is not None else 0
        if count < n_records:
            raise CacheCorruptError(
                f"The crowns file {path.name} lost committed crowns.", path.parent, start_afresh_fixes=True
            )
        if count == n_records:
            return False
        ds.ExecuteSQL(f"DELETE FROM {LAYER_NAME} WHERE id > {int(n_records)}")
        ds = None
        return True


def instance_cache_class(vector_format: VectorFormat | str) -> type[VectorInstanceCache]:
    return {VectorFormat.SHAPEFILE: ShapefileInstanceCache,
            VectorFormat.GEOPACKAGE: GeoPackageInstanceCache}[VectorFormat(vector_format)]


def _remove_with_sidecars(path: Path, fmt: VectorFormat) -> bool:
    """Delete a crowns file and its format's sidecar files; returns whether any existed."""
    parts = [path] + [path.with_name(name) for name in fmt.sidecars]
    existed = any(p.exists() for p in parts)
    for p in parts:
        p.unlink(missing_ok=True)
    return existed
