"""``python -m engine status CACHE_DIR``: what a cache holds."""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("status", help="show what a cache folder holds")
    p.add_argument("cache_dir", type=Path)
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
    return 0
