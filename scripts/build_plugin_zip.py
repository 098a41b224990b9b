"""Build the QGIS plugin ZIP (dist/tcd_qgis_plugin.zip) from the list in pb_tool.cfg.

The ZIP's single top folder ``tcd_qgis_plugin/`` holds the plugin package's own
files, the engine as ``tcd_qgis_plugin/engine/``, ``resources/`` (styles, icons,
the default model), ``metadata.txt`` and ``requirements.txt`` (and ``LICENSE``
when the repository has one). Nothing else goes in: tests, benchmarks, training,
docs and the sample raster stay out.

    python scripts/build_plugin_zip.py                  # dist/tcd_qgis_plugin.zip
    python scripts/build_plugin_zip.py --deploy DIR     # also copy the plugin folder into DIR
                                                        # (a profile's python/plugins folder)
    python scripts/build_plugin_zip.py --stage          # also leave build/tcd_qgis_plugin/ with a
                                                        # pb_tool.cfg for that layout

Uses only the standard library, so any Python 3.9+ runs it.
"""

from __future__ import annotations

import argparse
import configparser
import shutil
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = "tcd_qgis_plugin"
SKIP_NAMES = {"__pycache__", ".DS_Store"}
SKIP_SUFFIXES = {".pyc", ".pyo"}
# Folders that may be empty in a checkout (the default model is trained separately).
OPTIONAL_DIRS = {"resources/models"}


def read_list(cfg_path: Path) -> tuple[list[str], list[str]]:
    """(files, dirs) named in pb_tool.cfg, relative to the repository root."""
    cfg = configparser.ConfigParser()
    cfg.read(cfg_path, encoding="utf-8")
    files = cfg.get("files", "python_files").split() + cfg.get("files", "extras").split()
    dirs = cfg.get("files", "extra_dirs").split()
    return files, dirs


def target(rel: str) -> str:
    """Where a repository path goes inside the plugin folder."""
    prefix = PLUGIN + "/"
    return rel.removeprefix(prefix)


def collect(root: Path = ROOT) -> list[tuple[Path, str]]:
    """(source file, path inside the plugin folder) for everything the plugin carries."""
    files, dirs = read_list(root / "pb_tool.cfg")
    if (root / "LICENSE").is_file():
        files.append("LICENSE")
    entries = []
    for rel in files:
        source = root / rel
        if not source.is_file():
            raise SystemExit(f"error: {rel} is listed in pb_tool.cfg but does not exist")
        entries.append((source, target(rel)))
    for rel in dirs:
        folder = root / rel
        if not folder.is_dir():
            if rel in OPTIONAL_DIRS:
                print(f"warning: {rel} does not exist; the ZIP has no default model", file=sys.stderr)
                continue
            raise SystemExit(f"error: {rel} is listed in pb_tool.cfg but does not exist")
        for source in sorted(folder.rglob("*")):
            parts = source.relative_to(root).parts
            if source.is_file() and not SKIP_NAMES & set(parts) and source.suffix not in SKIP_SUFFIXES:
                entries.append((source, target("/".join(parts))))
    if OPTIONAL_DIRS and not any(t.startswith("resources/models/") and t.endswith(".onnx") for _, t in entries):
        print("warning: no ONNX model in resources/models; the ZIP has no default model", file=sys.stderr)
    return entries


def write_zip(entries, zip_path: Path) -> Path:
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = zip_path.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for source, rel in entries:
            zf.write(source, f"{PLUGIN}/{rel}")
    tmp.replace(zip_path)
    return zip_path


def copy_folder(entries, plugin_dir: Path) -> Path:
    """Replace ``plugin_dir`` with a fresh copy of the plugin folder."""
    if plugin_dir.exists():
        shutil.rmtree(plugin_dir)
    for source, rel in entries:
        dest = plugin_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest)
    return plugin_dir


def staged_pb_tool_cfg(root: Path = ROOT) -> str:
    """pb_tool.cfg rewritten for the plugin folder's own layout."""
    cfg = configparser.ConfigParser()
    cfg.read(root / "pb_tool.cfg", encoding="utf-8")
    for key in ("python_files", "extras", "extra_dirs"):
        cfg.set("files", key, " ".join(target(p) for p in cfg.get("files", key).split()))
    lines = []
    for section in cfg.sections():
        lines.append(f"[{section}]")
        lines.extend(f"{key}: {value}" for key, value in cfg.items(section))
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist" / f"{PLUGIN}.zip", help="ZIP to write")
    parser.add_argument("--deploy", type=Path, metavar="PLUGINS_DIR",
                        help="also copy the plugin folder into this plugins folder")
    parser.add_argument("--stage", action="store_true", help="also leave build/tcd_qgis_plugin/ for pb_tool")
    args = parser.parse_args(argv)
    entries = collect()
    print(f"wrote {write_zip(entries, args.out)} ({len(entries)} files)")
    if args.deploy:
        print(f"deployed to {copy_folder(entries, args.deploy / PLUGIN)}")
    if args.stage:
        staged = copy_folder(entries, ROOT / "build" / PLUGIN)
        (staged / "pb_tool.cfg").write_text(staged_pb_tool_cfg(), encoding="utf-8")
        print(f"staged {staged}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
