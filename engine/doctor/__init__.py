"""What the engine needs from its Python environment, and whether it has it.

The runtime requirements live in one file, ``requirements.txt``, which sits in
the folder that holds the ``engine`` package: the repository root in a source
checkout, the plugin folder inside the plugin ZIP. numpy and GDAL's bindings
(``osgeo``) are not in it on purpose: QGIS brings them, and a second copy beside
QGIS's can break GDAL's bindings. They are still checked here, as "provided by
QGIS/system".

Versions are compared in PEP 440 order by a small comparator of our own, since
the ``packaging`` module is not guaranteed inside every QGIS. It handles the
release, pre-, post- and dev-release parts, wildcards (``==1.2.*``) and ``~=``;
it ignores PEP 440's finer rules for excluding pre-releases.

This module imports only the standard library at import time, so it works (and
reports what is missing) when onnxruntime, rasterio or scipy are absent. Apart
from :func:`diagnose`, nothing here imports the packages it checks.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import io
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

REQUIREMENTS_FILE = Path(__file__).resolve().parents[2] / "requirements.txt"

# Packages that QGIS itself imports. The plugin must use QGIS's copies and never
# install them: distribution name -> import name.
PROVIDED_BY_QGIS = {"numpy": "numpy", "GDAL": "osgeo"}

# ONNX Runtime providers that need no local device check: the CPU always works
# and Azure is a remote endpoint, not an accelerator.
_NOT_ACCELERATORS = {"CPUExecutionProvider", "AzureExecutionProvider"}


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


# --------------------------------------------------------------------------- ONNX Runtime


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _bytes_field(number: int, payload: bytes | str) -> bytes:
    payload = payload.encode() if isinstance(payload, str) else payload
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _tiny_model() -> bytes:
    """A valid ONNX model, ``y = x + x`` on a float tensor of shape (1,), as protobuf bytes.

    Built by hand so that checking a device needs no ``onnx`` package. Field
    numbers are those of onnx.proto (ModelProto, GraphProto, NodeProto, ...).
    """

    def value_info(name: str) -> bytes:
        dim = _bytes_field(1, _int_field(1, 1))  # Dimension.dim_value = 1
        tensor = _int_field(1, 1) + _bytes_field(2, dim)  # elem_type FLOAT, shape
        return _bytes_field(1, name) + _bytes_field(2, _bytes_field(1, tensor))

    node = _bytes_field(1, "x") + _bytes_field(1, "x") + _bytes_field(2, "y") + _bytes_field(4, "Add")
    graph = _bytes_field(1, node) + _bytes_field(2, "tcd_doctor")
    graph += _bytes_field(11, value_info("x")) + _bytes_field(12, value_info("y"))
    opset = _bytes_field(1, "") + _int_field(2, 17)
    return _int_field(1, 8) + _bytes_field(2, "tcd-doctor") + _bytes_field(7, graph) + _bytes_field(8, opset)


TINY_MODEL = _tiny_model()


@dataclass(frozen=True)
class ProviderCheck:
    """Whether an available ONNX Runtime execution provider can really start."""

    name: str
    works: bool
    problem: str | None = None  # one sentence when it does not work
    details: str = ""  # what ONNX Runtime said, for the log


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _output_while(func):
    """Run ``func`` and return (its result, what it printed meanwhile, as plain text).

    ONNX Runtime logs why a provider failed from C++ straight to file
    descriptor 2, which ``sys.stderr`` redirection cannot catch, and its Python
    layer prints an "EP Error" banner to ``sys.stdout``; both are kept out of the
    report and returned instead.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    printed = io.StringIO()
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            with contextlib.redirect_stdout(printed):
                result = func()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        text = printed.getvalue() + capture.read().decode("utf-8", "replace")
    return result, _ANSI.sub("", text).strip()


def check_provider(ort, provider: str) -> ProviderCheck:
    """Start a session on :data:`TINY_MODEL` with ``provider`` and see whether it was used."""
    if provider in _NOT_ACCELERATORS:
        return ProviderCheck(provider, True)

    def start():
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        return ort.InferenceSession(TINY_MODEL, sess_options=options, providers=[provider, "CPUExecutionProvider"])

    try:
        session, said = _output_while(start)
    except Exception as exc:  # noqa: BLE001 - any failure means the provider cannot start
        return ProviderCheck(
            provider, False, f"{provider} is installed but cannot start, so inference would fail on it.", str(exc)
        )
    if provider in session.get_providers():
        return ProviderCheck(provider, True, details=said)
    return ProviderCheck(
        provider,
        False,
        f"{provider} is listed by ONNX Runtime but cannot start here (driver or libraries missing), "
        "so inference would run on the CPU.",
        said,
    )


# --------------------------------------------------------------------------- report


def _last_line(text: str) -> str:
    """The last non-blank line of a log, where ONNX Runtime says what it lacks."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not set(line.strip()) <= {"*"}]
    # Drop ONNX Runtime's "<date> <time> [W:onnxruntime:Default, file.cc:123 Function] " prefix.
    return re.sub(r"^\S+ \S+ \[[^\]]*\] ", "", lines[-1]) if lines else ""


@dataclass(frozen=True)
class Report:
    """Everything ``python -m engine doctor`` prints."""

    python: str
    requirements: list[Requirement]
    provided: list[Requirement]
    import_problems: list[str] = field(default_factory=list)
    providers: list[ProviderCheck] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        """One sentence per thing that stops or slows the engine."""
        return (
            [req.reason for req in self.requirements + self.provided if req.reason]
            + self.import_problems
            + [p.problem for p in self.providers if p.problem]
        )

    @property
    def ok(self) -> bool:
        return not any(req.reason for req in self.requirements + self.provided) and not self.import_problems

    def format(self) -> str:
        rows = [("package", "needs", "found", "location")]
        for req in self.requirements:
            rows.append((req.name, req.spec or "any", req.found_version or "missing", req.location or "-"))
        for req in self.provided:
            rows.append(
                (req.name, "provided by QGIS/system", req.found_version or "missing", req.location or "-")
            )
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = [f"Python {self.python}", ""]
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3] for row in rows]
        lines.append("")
        if self.providers:
            names = ", ".join(p.name for p in self.providers)
            lines.append(f"ONNX Runtime execution providers: {names}")
            lines += [f"  {p.name}: {_last_line(p.details)}" for p in self.providers if not p.works and p.details]
        else:
            lines.append("ONNX Runtime execution providers: none (onnxruntime is not usable)")
        problems = self.problems
        lines.append("")
        lines += [f"problem: {sentence}" for sentence in problems] or ["Everything the engine needs is present."]
        return "\n".join(lines)


def _site_of(module) -> str | None:
    """The folder a module was imported from (``.../site-packages`` for a package)."""
    path = getattr(module, "__file__", None)
    if not path:
        return None
    path = Path(path).resolve()
    return str(path.parent.parent if path.name == "__init__.py" else path.parent)


def _same_dir(a: str, b: str) -> bool:
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def diagnose(requirements: list[Requirement] | None = None) -> Report:
    """Check every requirement, import each one found, and try each ONNX Runtime provider."""
    checked = check_all(requirements)
    provided = provided_by_qgis()
    import_problems = []
    usable = {}
    for req in checked + provided:
        if req.found_version is None:
            continue
        module = import_name(req)
        try:
            usable[req.name] = importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - a broken install fails in many ways
            first_line = (str(exc).splitlines() or [""])[0]
            import_problems.append(
                f"{req.name} {req.found_version} is installed but cannot be imported "
                f"({type(exc).__name__}: {first_line})."
            )
            continue
        imported_from = _site_of(usable[req.name])
        if imported_from and req.location and not _same_dir(imported_from, req.location):
            import_problems.append(
                f"{module} is imported from {imported_from}, not from the {req.name} {req.found_version} "
                f"in {req.location}: two copies are installed, remove one."
            )
    providers = []
    ort = usable.get("onnxruntime")
    if ort is not None:
        providers = [check_provider(ort, name) for name in ort.get_available_providers()]
    python = f"{sys.version.split()[0]} at {sys.executable} (prefix {sys.prefix})"
    return Report(python, checked, provided, import_problems, providers)
