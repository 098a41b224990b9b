"""The instance cache: crown polygons in one Shapefile or GeoPackage layer.

All crowns sit in one layer with ``id`` (unique across the cache), ``score``,
``class``, ``class_idx`` and ``tile_id``. Crowns are appended tile by tile and
synced before the tile commits. Rolling back to a committed crown count
truncates the files in place, without reading the features.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from osgeo import gdal, ogr, osr

from ..errors import CacheCorruptError, CacheWriteError
from ..postprocess.vectorise import Crown
from .durable import disk_error, fsync_path

ogr.UseExceptions()
osr.UseExceptions()
gdal.UseExceptions()

VECTOR_STEM = "crowns"
LAYER_NAME = "crowns"


FIELDS = (("id", ogr.OFTInteger64, 18, 0), ("score", ogr.OFTReal, 8, 5), ("class", ogr.OFTString, 32, 0),
          ("class_idx", ogr.OFTInteger, 4, 0), ("tile_id", ogr.OFTInteger, 9, 0))


class VectorInstanceCache:
    """Crown polygons in one OGR layer (Shapefile or GeoPackage)."""

    driver_name = ""
    suffix = ""

    def __init__(self, cache_dir: Path, crs_wkt: str):
        self.cache_dir = Path(cache_dir)
        self.path = self.cache_dir / f"{VECTOR_STEM}{self.suffix}"
        self.rel = self.path.name
        try:
            if self.path.exists():
                self.ds = ogr.Open(str(self.path), 1)
                self.layer = self.ds.GetLayerByName(LAYER_NAME) or self.ds.GetLayer(0)
            else:
                driver = ogr.GetDriverByName(self.driver_name)
                self.ds = driver.CreateDataSource(str(self.path))
                srs = osr.SpatialReference()
                srs.ImportFromWkt(crs_wkt)
                srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
                self.layer = self.ds.CreateLayer(LAYER_NAME, srs, ogr.wkbPolygon, self.layer_options())
                for name, kind, width, precision in FIELDS:
                    fd = ogr.FieldDefn(name, kind)
                    fd.SetWidth(width)
                    fd.SetPrecision(precision)
                    self.layer.CreateField(fd)
                self.sync()
        except RuntimeError as exc:
            raise CacheCorruptError(f"The crowns file {self.path} cannot be opened or created: {exc}.") from exc
        if self.layer is None:
            raise CacheCorruptError(f"The crowns file {self.path} holds no layer.")
        self.defn = self.layer.GetLayerDefn()

    def layer_options(self) -> list[str]:
        return []

    def count(self) -> int:
        return self.layer.GetFeatureCount()

    def append(self, crowns: list[Crown], first_id: int, tile_id: int) -> None:
        try:
            self._begin()
            for i, crown in enumerate(crowns):
                feat = ogr.Feature(self.defn)
                feat.SetField("id", first_id + i)
                feat.SetField("score", round(crown.score, 5))
                feat.SetField("class", crown.class_name)
                feat.SetField("class_idx", crown.class_idx)
                feat.SetField("tile_id", tile_id)
                feat.SetGeometry(ogr.CreateGeometryFromWkb(crown.wkb))
                self.layer.CreateFeature(feat)
            self._commit()
            self.sync()
        except (RuntimeError, OSError) as exc:
            raise disk_error(f"crowns to {self.rel}", exc) from exc

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

    def close(self) -> None:
        self.layer = None
        self.ds = None


class ShapefileInstanceCache(VectorInstanceCache):
    driver_name = "ESRI Shapefile"
    suffix = ".shp"

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
            raise CacheWriteError(f"Writing crowns to {self.rel} failed (is the disk full?); free space and resume.")

    @staticmethod
    def truncate(path: Path, n_records: int) -> bool:
        """Cut a shapefile to its first ``n_records`` records in place; True if anything changed.

        The records were fsynced before their tiles committed, so they are intact;
        only headers and trailing records written after the last commit need
        repair. Works on the bytes, so a shapefile left inconsistent by a crash
        (e.g. .shp longer than .shx) is repaired without GDAL opening it.
        """
        shp, shx, dbf = (path.with_suffix(s) for s in (".shp", ".shx", ".dbf"))
        if n_records == 0:
            # Nothing committed: whatever exists may be half-created, so start the file afresh.
            parts = [path.with_suffix(s) for s in (".shp", ".shx", ".dbf", ".prj", ".cpg", ".qix")]
            existed = any(p.exists() for p in parts)
            for p in parts:
                p.unlink(missing_ok=True)
            return existed
        if not (shp.exists() and shx.exists() and dbf.exists()):
            raise CacheCorruptError(f"Part of the crowns shapefile {path.name} is missing; resume with --overwrite.")
        changed = False
        with open(shx, "r+b") as fx, open(shp, "r+b") as fs, open(dbf, "r+b") as fd:
            shx_size = os.fstat(fx.fileno()).st_size
            if (shx_size - 100) // 8 < n_records:
                raise CacheCorruptError(f"The crowns shapefile {path.name} lost committed crowns; resume with --overwrite.")
            if n_records:
                fx.seek(100 + 8 * (n_records - 1))
                offset_words, length_words = struct.unpack(">ii", fx.read(8))
                shp_end = (offset_words + 4 + length_words) * 2
            else:
                shp_end = 100
            if os.fstat(fs.fileno()).st_size < shp_end:
                raise CacheCorruptError(f"The crowns shapefile {path.name} lost committed crowns; resume with --overwrite.")
            fd.seek(4)
            dbf_header = fd.read(8)
            if len(dbf_header) < 8:
                raise CacheCorruptError(f"The crowns shapefile {path.name} is damaged; resume with --overwrite.")
            n_dbf, header_len, record_len = struct.unpack("<IHH", dbf_header)
            dbf_end = header_len + record_len * n_records
            dbf_size = os.fstat(fd.fileno()).st_size
            if dbf_size < dbf_end:
                raise CacheCorruptError(f"The crowns shapefile {path.name} lost committed crowns; resume with --overwrite.")
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
            for f in (fx, fs, fd):
                f.flush()
                os.fsync(f.fileno())
        if changed:
            # The header's extent may still cover removed crowns; let GDAL recompute it.
            ds = ogr.Open(str(shp), 1)
            ds.ExecuteSQL(f"RECOMPUTE EXTENT ON {shp.stem}")
            ds = None
        return changed


class GeoPackageInstanceCache(VectorInstanceCache):
    driver_name = "GPKG"
    suffix = ".gpkg"

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
            parts = [path] + [path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal")]
            existed = any(p.exists() for p in parts)
            for p in parts:
                p.unlink(missing_ok=True)
            return existed
        if not path.exists():
            raise CacheCorruptError(f"The crowns file {path.name} is missing; resume with --overwrite.")
        ds = ogr.Open(str(path), 1)
        layer = ds.GetLayerByName(LAYER_NAME)
        count = layer.GetFeatureCount() if layer is not None else 0
        if count < n_records:
            raise CacheCorruptError(f"The crowns file {path.name} lost committed crowns; resume with --overwrite.")
        if count == n_records:
            return False
        ds.ExecuteSQL(f"DELETE FROM {LAYER_NAME} WHERE id > {int(n_records)}")
        ds = None
        return True


def instance_cache_class(vector_format: str):
    return ShapefileInstanceCache if vector_format == "shp" else GeoPackageInstanceCache
