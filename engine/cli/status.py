"""``python -m engine status CACHE_DIR [--summary]``: what a cache holds, and what the run found."""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("status", help="show what a cache folder holds")
    p.add_argument("cache_dir", type=Path)
    p.add_argument("--summary", action="store_true",
                   help="also print the run summary: trees, trees per hectare, canopy cover, crown sizes...")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..cache.status import cache_layers, cache_status
    from ..errors import CacheCorruptError

    if not args.cache_dir.is_dir():
        raise CacheCorruptError(f"{args.cache_dir} is not a folder.")
    s = cache_status(args.cache_dir)
    if s.error:
        raise CacheCorruptError(s.error)
    if s.state == "empty" and s.locked_by is None:
        print(f"{args.cache_dir}: no cache here yet")
        return 0
    print(f"cache:   {s.cache_dir}")
    print(f"image:   {s.image_path}")
    print(f"model:   {s.model_name} ({s.model_path})")
    print(f"tiles:   {s.done}/{s.total} done ({s.skipped} skipped: empty or nodata)")
    print(f"crowns:  {s.features}")
    print(f"state:   {s.state}" + (f" ({s.locked_by})" if s.locked_by else ""))
    print("outputs: " + ", ".join(s.outputs))
    for layer in cache_layers(args.cache_dir):
        print(f"  {layer.name}: {layer.path}")
    if args.summary:
        print_summary(args.cache_dir)
    return 0


def print_summary(cache_dir: Path) -> None:
    """The figures of ``summary.json``, rebuilt from the cache when it has none (an older cache)."""
    from ..cache.manifest import read_manifest
    from ..cache.summary import format_figure, read_summary, rebuild_summary

    summary = read_summary(cache_dir)
    if summary is None:
        state = read_manifest(cache_dir)
        summary = rebuild_summary(cache_dir, state.header, state.tiles)
    rows = summary.rows()
    width = max(len(row.label) for row in rows) + 1
    print("summary:")
    for row in rows:
        print(f"  {row.label + ':':<{width}} {format_figure(row.value, row.unit)}")
