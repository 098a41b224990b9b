"""The source raster: opening it with one-sentence errors, its description, and its CRSs.

A raster is a local file or any path GDAL reads itself, such as ``/vsis3/bucket/ortho.tif``
or ``/vsicurl/https://host/ortho.tif`` (a cloud-optimised GeoTIFF): a remote raster has
no local file to check or stat, so GDAL's own stat (size, modification time) stands in
for the file's in the image fingerprint.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.warp import transform as warp_points

from ..errors import MissingCRSError, RasterError
from .grid import RasterInfo, apply, utm_epsg


def is_remote(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a raster on one of GDAL's virtual file systems (``/vsis3/``, ``/vsicurl/``...)."""
    return str(path).replace("\\", "/").startswith("/vsi")


def gdal_path(path: str | os.PathLike) -> str:
    """``path`` as GDAL takes it: a URL's ``//`` that ``Path`` collapsed (``/vsicurl/https:/host``) restored."""
    text = str(path)
    if is_remote(text):
        text = re.sub(r"(?<=/)(https?|ftps?|file):/(?=[^/])", r"\1://", text.replace("\\", "/"), count=1)
    return text


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200].rstrip(".")


def _open_remote(path: str):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as exc:
        raise RasterError(f"GDAL cannot open the raster {path} ({_first_line(exc)}).") from exc


def _remote_stat(path: str) -> tuple[int | None, int | None]:
    """``(size, mtime_ns)`` of a remote raster from GDAL's own stat (a HEAD request); None where unknown."""
    try:
        from osgeo import gdal
    except ImportError:  # pragma: no cover - GDAL's bindings come with QGIS
        return None, None
    stat = gdal.VSIStatL(path)
    if stat is None:
        return None, None
    return int(stat.size), int(stat.mtime) * 1_000_000_000


def open_raster(path: str | os.PathLike):
    """Open a raster with rasterio, turning every failure into a one-sentence RasterError."""
    if is_remote(path):
        return _open_remote(gdal_path(path))
    path = Path(path)
    if not path.exists():
        raise RasterError(f"The raster {path} does not exist.")
    if path.is_dir():
        raise RasterError(f"{path} is a folder, not a raster file.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as exc:
        if not os.access(path, os.R_OK):
            raise RasterError(f"The raster {path.name} cannot be read (permission denied).") from exc
        raise RasterError(f"{path.name} is not a raster GDAL can read, or the file is damaged.") from exc


def describe_raster(path: str | os.PathLike, assign_crs: str | None = None) -> RasterInfo:
    """Read the header facts of a raster and check it can be predicted.

    ``assign_crs`` (WKT or an authority code) stands in for the CRS of a file
    that has none; a file's own CRS always wins.
    """
    remote = is_remote(path)
    path = gdal_path(path) if remote else Path(path)
    name = path if remote else path.name
    with open_raster(path) as src:
        crs = src.crs
        if crs is None and assign_crs:
            try:
                crs = CRS.from_user_input(assign_crs)
            except Exception as exc:  # rasterio raises CRSError with PROJ's wording
                raise RasterError(f"The CRS to assign to {name} is not valid: {assign_crs[:80]}.") from exc
        if crs is None:
            raise MissingCRSError(f"{name} has no coordinate reference system.")
        t = src.transform
        if t.a == 1 and t.e == 1 and t.b == 0 and t.d == 0 and t.c == 0 and t.f == 0:
            raise RasterError(f"{name} has no georeferencing (no geotransform).")
        if t.a * t.e - t.b * t.d == 0:
            raise RasterError(f"{name} has a degenerate geotransform.")
        if crs.is_geographic:
            units_per_m = 1.0
        else:
            try:
                _, factor = crs.linear_units_factor
            except Exception as exc:  # rasterio raises CRSError for CRSs without linear units
                raise RasterError(f"The CRS of {name} has no linear unit; reproject it first.") from exc
            units_per_m = 1.0 / float(factor)
        if remote:
            file_size, mtime_ns = _remote_stat(path)
        else:
            stat = path.stat()
            file_size, mtime_ns = stat.st_size, stat.st_mtime_ns
        return RasterInfo(
            path=path if remote else str(path.resolve()),
            width=src.width,
            height=src.height,
            count=src.count,
            dtype=src.dtypes[0],
            crs_wkt=crs.to_wkt(),
            crs_is_geographic=bool(crs.is_geographic),
            units_per_m=units_per_m,
            transform=(t.a, t.b, t.c, t.d, t.e, t.f),
            file_size=file_size,
            mtime_ns=mtime_ns,
            paletted=src.count == 1 and src.colorinterp[0] == ColorInterp.palette,
        )


# A projected CRS whose scale on the ground departs from 1 by more than this anywhere over the raster
# is read in the local UTM zone, as a geographic CRS is: Web Mercator (1/cos(latitude): 1.25 at
# 37 N), polar stereographic away from its standard parallel, continental conics. UTM inside its
# zone (at most 0.1 %, 0.19 % six degrees off its meridian) and State Plane zones keep their own CRS.
MAX_SCALE_ERROR = 0.002

_WGS84_A, _WGS84_E2 = 6378137.0, 0.00669437999014


def ground_scale(info: RasterInfo) -> tuple[float, float]:
    """``(smallest, largest)`` ground metres per CRS metre of a projected raster, along x and y at its
    centre and corners (1, 1 where PROJ cannot place the CRS on the ellipsoid).

    Worked out from where 10 m steps along each axis land in longitude and latitude, with the
    ellipsoid's radii of curvature there: no other library than rasterio's PROJ is needed.
    """
    step = 10.0 * info.units_per_m  # CRS units
    cols = np.array([0.5, 0.0, 1.0, 0.0, 1.0]) * info.width
    rows = np.array([0.5, 0.0, 0.0, 1.0, 1.0]) * info.height
    x0, y0 = apply(info.transform, cols, rows)
    xs = np.concatenate([x0, x0 + step, x0])
    ys = np.concatenate([y0, y0, y0 + step])
    try:
        lon, lat = warp_points(CRS.from_wkt(info.crs_wkt), CRS.from_epsg(4326), xs, ys)
    except Exception:  # an engineering CRS with no datum: nothing to compare with
        return 1.0, 1.0
    lon, lat = np.radians(np.reshape(lon, (3, -1))), np.radians(np.reshape(lat, (3, -1)))
    if not np.all(np.isfinite(lon)) or not np.all(np.isfinite(lat)):
        return 1.0, 1.0
    sin2 = np.sin(lat[0]) ** 2
    meridian_m = _WGS84_A * (1 - _WGS84_E2) / (1 - _WGS84_E2 * sin2) ** 1.5  # per radian of latitude
    parallel_m = _WGS84_A / np.sqrt(1 - _WGS84_E2 * sin2) * np.cos(lat[0])  # per radian of longitude
    scales = []
    for k in (1, 2):
        dlon = (lon[k] - lon[0] + np.pi) % (2 * np.pi) - np.pi
        scales.append(np.hypot(dlon * parallel_m, (lat[k] - lat[0]) * meridian_m) / 10.0)
    scales = np.concatenate(scales)
    return float(scales.min()), float(scales.max())


def working_crs(info: RasterInfo, true_scale: bool = True) -> str:
    """The CRS tiles are predicted in (WKT): the source CRS, or the local UTM zone of the raster's centre
    when the source CRS is geographic or (``true_scale``) its metres are not ground metres within
    :data:`MAX_SCALE_ERROR`. ``true_scale`` False is the choice of caches made before it (tile plans 1, 2).
    """
    if not info.crs_is_geographic:
        if not true_scale:
            return info.crs_wkt
        smallest, largest = ground_scale(info)
        if max(abs(smallest - 1.0), abs(largest - 1.0)) <= MAX_SCALE_ERROR:
            return info.crs_wkt
    cx, cy = apply(info.transform, info.width / 2, info.height / 2)
    src = CRS.from_wkt(info.crs_wkt)
    lon, lat = warp_points(src, CRS.from_epsg(4326), [cx], [cy])
    return CRS.from_epsg(utm_epsg(lon[0], lat[0])).to_wkt()


def point_mapper(src_wkt: str, dst_wkt: str):
    """``f(xs, ys) -> (xs, ys)`` mapping coordinates from one CRS to another, or None if equal."""
    if src_wkt == dst_wkt:
        return None
    src, dst = CRS.from_wkt(src_wkt), CRS.from_wkt(dst_wkt)

    def mapper(xs, ys):
        out_x, out_y = warp_points(src, dst, np.atleast_1d(np.asarray(xs, float)), np.atleast_1d(np.asarray(ys, float)))
        return np.asarray(out_x), np.asarray(out_y)

    return mapper


def check_bands(info: RasterInfo, bands: tuple[int, ...]) -> None:
    """Raise RasterError if the raster lacks a band the model reads (``bands`` are 1-based)."""
    if info.paletted and max(bands) <= 3:  # read as the red, green and blue of its colour table
        return
    if max(bands) > info.count:
        raise RasterError(
            f"The model needs band{'s' if len(bands) > 1 else ''} {', '.join(map(str, bands))} "
            f"but {Path(info.path).name} has {info.count} band{'s' if info.count != 1 else ''}."
        )

