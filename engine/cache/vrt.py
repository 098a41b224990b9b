"""The mosaic's VRT files: a tree of small VRTs per pyramid level, so no file lists many sources.

Each level of the pyramid (level 0: the tile GeoTIFFs; level 1: a small GeoTIFF per
tile; level k ≥ 2: the overview tiles, see :mod:`.pyramid`) is one raster made of a
tree of VRT files:

* a **leaf** covers a square block of the level (``leaf_px`` pixels a side) and
  lists the rasters that meet it (levels 0 and 1: the tiles' files, placed at the
  pixels each tile owns; level k: the overview tiles of the block);
* an **inner node** at height ``h`` covers ``fanout`` × ``fanout`` nodes of height
  ``h - 1`` and lists those that exist;
* the **root** is the one node covering the whole level: ``confidence.vrt`` for
  level 0 (which also names every level's root as a band ``<Overview>``),
  ``mosaic/L{k}.vrt`` for level k. Other nodes are ``mosaic/L{k}/n{h}_{bx}_{by}.vrt``.

Paths are POSIX and relative to the cache folder; inside a VRT they are relative
to the VRT file. Every source carries ``SourceProperties``, so GDAL opens a source
only when a read reaches it: opening the mosaic reads one small file however
many tiles the cache holds.
"""

from __future__ import annotations

import posixpath
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass
from xml.sax.saxutils import escape

from .pyramid import Rect, grid_cells

MOSAIC_DIR = "mosaic"
VRT_NAME = "confidence.vrt"
VRT_BLOCK_PX = 128  # GDAL's block size of a VRT band (at most the raster's size)


@dataclass(frozen=True)
class MosaicGeometry:
    """How the pyramid and its VRT trees are cut; stored with the mosaic, which is rebuilt when it changes.

    ``tile_px``: side of an overview tile (a multiple of 16); levels are added until
    the whole image fits in one. ``leaf_tiles``: overview tiles per side of a
    level-k leaf. ``leaf0_px``: side of a level-0 leaf in source pixels (a few
    dozen tiles wide, see :func:`leaf0_px_for`). ``fanout``: nodes per side of an inner node.
    """

    tile_px: int = 512
    leaf_tiles: int = 16
    leaf0_px: int = 8192
    fanout: int = 16

    def leaf_px(self, level: int) -> int:
        """Side of a leaf in pixels of ``level``: levels 0 and 1 list one file per tile, as many a leaf."""
        if level <= 1:
            return self.leaf0_px >> level
        return self.tile_px * self.leaf_tiles

    def to_json(self) -> dict:
        return asdict(self)


def leaf0_px_for(core_px: int, *, tiles_per_leaf: int = 16, least_px: int = 256) -> int:
    """A level-0 leaf side (a power of two) about ``tiles_per_leaf`` tiles of ``core_px`` wide."""
    side = least_px
    while side < tiles_per_leaf * core_px:
        side *= 2
    return side


@dataclass(frozen=True)
class Source:
    """A raster listed in a VRT: ``path`` relative to the cache, placed at ``rect`` of the level."""

    path: str
    rect: Rect
    size: tuple[int, int]  # the raster's own width, height
    block: tuple[int, int]  # its block size, as GDAL will find it


class LevelTree:
    """The VRT tree of one level of ``width`` × ``height`` pixels."""

    def __init__(self, level: int, width: int, height: int, leaf_px: int, fanout: int):
        self.level, self.width, self.height = level, width, height
        self.leaf_px, self.fanout = leaf_px, fanout
        self.top = 0
        while leaf_px * fanout**self.top < max(width, height):
            self.top += 1

    def span(self, h: int) -> int:
        return self.leaf_px * self.fanout**h

    def rect(self, node: tuple[int, int, int]) -> Rect:
        h, bx, by = node
        s = self.span(h)
        return bx * s, by * s, min((bx + 1) * s, self.width), min((by + 1) * s, self.height)

    def leaves(self, rect: Rect) -> list[tuple[int, int, int]]:
        return [(0, bx, by) for bx, by in grid_cells(rect, self.leaf_px)]

    def parent(self, node: tuple[int, int, int]) -> tuple[int, int, int]:
        h, bx, by = node
        return h + 1, bx // self.fanout, by // self.fanout

    @property
    def root(self) -> tuple[int, int, int]:
        return self.top, 0, 0

    def path(self, node: tuple[int, int, int]) -> str:
        if node[0] == self.top:
            return VRT_NAME if self.level == 0 else f"{MOSAIC_DIR}/L{self.level}.vrt"
        return f"{MOSAIC_DIR}/L{self.level}/n{node[0]}_{node[1]}_{node[2]}.vrt"

    def node_source(self, node: tuple[int, int, int]) -> Source:
        r = self.rect(node)
        w, h = r[2] - r[0], r[3] - r[1]
        return Source(self.path(node), r, (w, h), (min(VRT_BLOCK_PX, w), min(VRT_BLOCK_PX, h)))


def vrt_xml(path: str, origin: Rect, n_bands: int, sources, *, srs: str | None = None,
            geotransform: tuple | None = None, descriptions=(), overviews=()) -> str:
    """The XML of the VRT at ``path`` covering ``origin`` of its level, listing ``sources``.

    ``overviews`` are the paths of the level roots (for ``confidence.vrt``).
    """
    here = posixpath.dirname(path) or "."
    width, height = origin[2] - origin[0], origin[3] - origin[1]
    entries = []
    for s in sources:
        x, y = s.rect[0] - origin[0], s.rect[1] - origin[1]
        w, h = s.rect[2] - s.rect[0], s.rect[3] - s.rect[1]
        entries.append((escape(posixpath.relpath(s.path, here)), x, y, w, h, s.size, s.block))
    lines = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">']
    if srs is not None:
        lines.append(f"  <SRS>{escape(srs)}</SRS>")
    if geotransform is not None:
        lines.append("  <GeoTransform>" + ", ".join(repr(v) for v in geotransform) + "</GeoTransform>")
    for band in range(1, n_bands + 1):
        lines.append(f'  <VRTRasterBand dataType="Byte" band="{band}">')
        if band <= len(descriptions):
            lines.append(f"    <Description>{escape(descriptions[band - 1])}</Description>")
        for rel, x, y, w, h, (sw, sh), (bw, bh) in entries:
            lines.append(
                f'    <SimpleSource><SourceFilename relativeToVRT="1">{rel}</SourceFilename>'
                f"<SourceBand>{band}</SourceBand>"
                f'<SourceProperties RasterXSize="{sw}" RasterYSize="{sh}" DataType="Byte" '
                f'BlockXSize="{bw}" BlockYSize="{bh}"/>'
                f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
                f'<DstRect xOff="{x}" yOff="{y}" xSize="{w}" ySize="{h}"/></SimpleSource>'
            )
        for ov in overviews:
            lines.append(f'    <Overview><SourceFilename relativeToVRT="1">{escape(posixpath.relpath(ov, here))}'
                         f"</SourceFilename><SourceBand>{band}</SourceBand></Overview>")
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>\n")
    return "\n".join(lines)


def parse_sources(path: str, origin: Rect, text: str) -> list[Source]:
    """The sources of band 1 of a VRT written by :func:`vrt_xml` (paths back relative to the cache)."""
    here = posixpath.dirname(path) or "."
    band = ElementTree.fromstring(text).find("VRTRasterBand")
    sources = []
    for s in band.iterfind("SimpleSource") if band is not None else ():
        rel = posixpath.normpath(posixpath.join(here, s.findtext("SourceFilename")))
        props, dst = s.find("SourceProperties"), s.find("DstRect")
        x, y = origin[0] + int(dst.get("xOff")), origin[1] + int(dst.get("yOff"))
        w, h = int(dst.get("xSize")), int(dst.get("ySize"))
        sources.append(Source(rel, (x, y, x + w, y + h), (int(props.get("RasterXSize")), int(props.get("RasterYSize"))),
                              (int(props.get("BlockXSize")), int(props.get("BlockYSize")))))
    return sources
