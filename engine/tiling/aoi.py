"""Areas of interest: which tiles a polygon selects."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import shapely

from ..errors import InputError
from .grid import Affine6, apply


def aoi_filter(aoi_wkt: str | None, transform: Affine6) -> Callable[[tuple], bool] | None:
    """``contains(core_px) -> bool``: whether a core (source pixels) touches the area (WKT, source CRS).

    None when there is no area of interest. Raises InputError for WKT that is not
    a valid non-empty polygon.
    """
    if not aoi_wkt:
        return None
    try:
        aoi = shapely.from_wkt(aoi_wkt)
    except shapely.errors.GEOSException as exc:
        raise InputError("The area of interest is not a valid polygon (WKT).") from exc
    if aoi is None or aoi.is_empty or aoi.area == 0:
        raise InputError("The area of interest is empty.")
    if not aoi.is_valid:
        aoi = shapely.make_valid(aoi)
    shapely.prepare(aoi)

    def contains(core: tuple) -> bool:
        c, r, w, h = core
        xs, ys = apply(transform, np.array([c, c + w, c + w, c], float), np.array([r, r, r + h, r + h], float))
        return bool(aoi.intersects(shapely.Polygon(np.column_stack([xs, ys]))))

    return contains
