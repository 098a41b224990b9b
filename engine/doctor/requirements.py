"""Runtime requirements: reading ``requirements.txt``, comparing versions, finding installed copies.

Versions are compared in PEP 440 order by a small comparator of our own, since
the ``packaging`` module is not guaranteed inside every QGIS. It handles the
release, pre-, post- and dev-release parts, wildcards (``==1.2.*``) and ``~=``;
it ignores PEP 440's finer rules for excluding pre-releases. Standard library only.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from dataclasses import dataclass, replace
from pathlib import Path

REQUIREMENTS_FILE = Path(__file__).resolve().parents[2] / "requirements.txt"

# Packages that QGIS itself imports. The plugin must use QGIS's copies and never
# install them: distribution name -> import name.
PROVIDED_BY_QGIS = {"numpy": "numpy", "GDAL": "osgeo"}


@dataclass(frozen=True)
class Requirement:
    """One runtime requirement and, once checked, what the environment holds.

    ``spec`` is the version specifier as written (``">=1.16,<2"``; ``""`` for any
    version). ``reason`` is ``None`` when the requirement is met, else one
    sentence saying why not. ``location`` is the folder it was found in.
    """

    name: str
    spec: str = ""
    found_version: str | None = None
    location: str | None = None
    reason: str | None = None
    provided_by_qgis: bool = False

    @property
    def ok(self) -> bool:
        return self.reason is None

    @property
    def pip_spec(self) -> str:
        """The requirement as pip takes it (``onnxruntime>=1.16,<2``)."""
        return f"{self.name}{self.spec}"


# --------------------------------------------------------------------------- versions

_VERSION = re.compile(
    r"""^\s*v?
    (?:(?P<epoch>\d+)!)?
    (?P<release>\d+(?:\.\d+)*)
    (?:[-_.]?(?P<pre_l>a|b|c|rc|alpha|beta|pre|preview)[-_.]?(?P<pre_n>\d*))?
    (?:-(?P<post_n1>\d+)|[-_.]?(?P<post_l>post|rev|r)[-_.]?(?P<post_n2>\d*))?
    (?:[-_.]?(?P<dev_l>dev)[-_.]?(?P<dev_n>\d*))?
    (?:\+(?P<local>[a-z0-9]+(?:[-_.][a-z0-9]+)*))?
    \s*$""",
    re.VERBOSE | re.IGNORECASE,
)
_PRE_RANK = {"a": 0, "alpha": 0, "b": 1, "beta": 1, "c": 2, "rc": 2, "pre": 2, "preview": 2}


def version_key(version: str) -> tuple:
    """A sort key giving PEP 440 order (``1.0.dev1 < 1.0a1 < 1.0 < 1.0.post1``).

    Raises ValueError for a string that is not a PEP 440 version.
    """
    match = _VERSION.match(version)
    if not match:
        raise ValueError(f"'{version}' is not a valid version.")
    release = [int(part) for part in match["release"].split(".")]
    while len(release) > 1 and release[-1] == 0:
        release.pop()  # 1.0 == 1.0.0
    has_post = match["post_n1"] is not None or match["post_l"] is not None
    if match["pre_l"]:
        pre = (0, _PRE_RANK[match["pre_l"].lower()], int(match["pre_n"] or 0))
    elif match["dev_l"] and not has_post:
        pre = (-1, 0, 0)  # 1.0.dev1 sorts before 1.0a1
    else:
        pre = (1, 0, 0)
    post = (int(match["post_n1"] or match["post_n2"] or 0),) if has_post else (-1,)
    dev = (0, int(match["dev_n"] or 0)) if match["dev_l"] else (1, 0)
    return (int(match["epoch"] or 0), tuple(release), pre, post, dev)


def _release(version: str) -> list[int]:
    match = _VERSION.match(version)
    if not match:
        raise ValueError(f"'{version}' is not a valid version.")
    return [int(part) for part in match["release"].split(".")]


def _prefix_match(version: str, prefix: str) -> bool:
    """``==1.2.*``: the release of ``version`` starts with ``1.2`` (zero-padded)."""
    wanted = _release(prefix)
    have = _release(version)
    have += [0] * (len(wanted) - len(have))
    return have[: len(wanted)] == wanted


def satisfies(version: str, spec: str) -> bool:
    """Whether ``version`` meets every clause of ``spec`` (``">=1.16,<2"``).

    An empty spec accepts any version. Raises ValueError for a clause or version
    that cannot be parsed.
    """
    for clause in (c.strip() for c in spec.split(",")):
        if not clause:
            continue
        match = re.match(r"^(===|~=|==|!=|<=|>=|<|>)\s*(\S+)$", clause)
        if not match:
            raise ValueError(f"'{clause}' is not a valid version specifier.")
        op, target = match.groups()
        if op == "===":
            ok = version.strip() == target
        elif op in ("==", "!=") and target.endswith(".*"):
            ok = _prefix_match(version, target[:-2]) == (op == "==")
        elif op == "~=":
            release = _release(target)
            if len(release) < 2:
                raise ValueError(f"'{clause}' needs at least two release numbers.")
            prefix = ".".join(str(n) for n in release[:-1])
            ok = version_key(version) >= version_key(target) and _prefix_match(version, prefix)
        else:
            have, want = version_key(version), version_key(target)
            ok = {
                "==": have == want,
                "!=": have != want,
                "<=": have <= want,
                ">=": have >= want,
                "<": have < want,
                ">": have > want,
            }[op]
        if not ok:
            return False
    return True


# --------------------------------------------------------------------------- requirements

_REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*)$")


def parse_requirements(text: str) -> list[Requirement]:
    """Requirements from the text of a requirements file.

    Takes one ``name[extras] specifier`` per line; comments and blank lines are
    skipped. Environment markers, options (``-r``, ``--index-url``) and URLs are
    not used in our runtime file and raise ValueError rather than being ignored.
    """
    requirements = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _REQUIREMENT.match(line)
        if not match or line.startswith("-") or ";" in line or "@" in line:
            raise ValueError(f"Line {number} of the requirements is not a plain 'name>=version' requirement: {raw!r}.")
        name, spec = match[1], re.sub(r"\s+", "", match[2])
        satisfies("0", spec)  # raises ValueError for a malformed specifier
        requirements.append(Requirement(name=name, spec=spec))
    return requirements


def read_requirements(path: Path | None = None) -> list[Requirement]:
    """The runtime requirements (``requirements.txt`` beside the engine by default)."""
    return parse_requirements(Path(path or REQUIREMENTS_FILE).read_text(encoding="utf-8"))


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _distribution(name: str) -> importlib.metadata.Distribution | None:
    """The installed distribution ``name``, as the import system would find it first.

    Falls back to a distribution that provides the module of that name, so that
    ``onnxruntime-gpu`` counts as ``onnxruntime``.
    """
    for candidate in (name, name.replace("-", "_")):
        try:
            return importlib.metadata.distribution(candidate)
        except importlib.metadata.PackageNotFoundError:
            pass
    module = _normalise(name).replace("-", "_")
    for dist in importlib.metadata.distributions():
        top_level = dist.read_text("top_level.txt") or ""
        if module in top_level.split():
            return dist
    return None


def import_name(req: Requirement) -> str:
    """The top-level module a requirement provides (``GDAL`` -> ``osgeo``)."""
    if req.name in PROVIDED_BY_QGIS:
        return PROVIDED_BY_QGIS[req.name]
    dist = _distribution(req.name)
    top_level = (dist.read_text("top_level.txt") or "").split() if dist else []
    return top_level[0] if len(top_level) == 1 else _normalise(req.name).replace("-", "_")


def _fits(version: str, spec: str) -> bool:
    try:
        return satisfies(version, spec)
    except ValueError:  # an installed version that is not PEP 440 cannot be trusted
        return False


def check(req: Requirement) -> Requirement:
    """``req`` with the installed version, its folder, and a reason if unmet.

    Looks at package metadata only; nothing is imported.
    """
    dist = _distribution(req.name)
    if dist is None:
        return replace(req, found_version=None, location=None, reason=f"{req.name} is not installed.")
    version = dist.version
    location = str(Path(str(dist.locate_file(""))).resolve())
    reason = None
    if not _fits(version, req.spec):
        clauses = [c for c in req.spec.split(",") if c]
        if not _fits(version, ",".join(c for c in clauses if c.startswith((">", "~=")))):
            reason = f"{req.name} {version} is too old (needs {req.spec})."
        elif not _fits(version, ",".join(c for c in clauses if c.startswith("<"))):
            reason = f"{req.name} {version} is too new (needs {req.spec})."
        else:
            reason = f"{req.name} {version} does not fit (needs {req.spec})."
    return replace(req, found_version=version, location=location, reason=reason)


def check_all(requirements: list[Requirement] | None = None) -> list[Requirement]:
    """Every requirement, checked (``requirements.txt`` by default)."""
    return [check(req) for req in (read_requirements() if requirements is None else requirements)]


def missing(requirements: list[Requirement] | None = None) -> list[Requirement]:
    """The requirements that are absent, too old or too new, with their reasons."""
    return [req for req in check_all(requirements) if not req.ok]


def provided_by_qgis() -> list[Requirement]:
    """numpy and GDAL's bindings as this Python has them (no version bound of ours)."""
    checked = []
    for dist_name, module in PROVIDED_BY_QGIS.items():
        req = check(Requirement(name=dist_name, provided_by_qgis=True))
        if req.ok:
            checked.append(req)
            continue
        try:  # some builds ship the bindings without package metadata
            mod = importlib.import_module(module)
        except ImportError:
            checked.append(req)
            continue
        version = getattr(mod, "__version__", None)
        if version is None and module == "osgeo":
            version = importlib.import_module("osgeo.gdal").__version__
        checked.append(
            replace(req, found_version=version, location=str(Path(mod.__file__).resolve().parent.parent), reason=None)
        )
    return checked
