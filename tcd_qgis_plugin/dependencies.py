"""The plugin's Python dependencies: find what is missing, install it beside QGIS.

What the engine needs is listed in ``requirements.txt`` (see :mod:`tcd_qgis_plugin.engine.doctor`,
which does the checking). Packages the plugin installs go to a folder it owns under
the QGIS profile, ``<profile>/python/dependencies/tcd_qgis_plugin/python3.X``, so
they survive plugin upgrades and a Python upgrade of QGIS starts a fresh folder.

That folder is *appended* to ``sys.path``: QGIS's own packages always win, so it
can never shadow QGIS's numpy or GDAL. It must still never hold numpy or anything
else QGIS imports (:data:`PROTECTED`): the worker process gets the folder through
PYTHONPATH, which Python puts *before* site-packages, and a second numpy there
would break GDAL's bindings in the worker. The installer therefore

1. resolves the missing requirements with pip against the packages QGIS's Python
   already has, numpy and GDAL pinned to QGIS's versions (``--dry-run --report``);
2. installs exactly that list with ``--no-deps`` into a staging folder;
3. deletes anything protected that still landed there, then moves the rest in.

pip older than 22.2 has no ``--report``; then step 1 and 2 are one ``--target``
install under the same pins, and step 3 removes the numpy that pip put in too.
"""

from __future__ import annotations

import ast
import html
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path

from qgis.core import Qgis, QgsApplication, QgsMessageLog, QgsTask
from qgis.PyQt.QtWidgets import QApplication

from tcd_qgis_plugin.core import messages
from tcd_qgis_plugin.core.texts import LOG_TAG
from tcd_qgis_plugin.engine import doctor

# Top-level names (import names and distribution names, lower case, "-" as "_")
# that QGIS itself provides and imports: the engine's own list (numpy, GDAL) plus
# QGIS's bindings and Qt. They never go into our folder.
PROTECTED = frozenset(
    {re.sub(r"[-_.]+", "_", name).lower() for pair in doctor.PROVIDED_BY_QGIS.items() for name in pair}
    | {"qgis", "pyqt5", "pyqt5_sip", "pyqt5_qt5", "pyqt6", "pyqt6_sip", "sip", "psycopg2"}
)

# pip got --dry-run --report in 22.2.
_PIP_WITH_REPORT = (22, 2)

_NO_WINDOW = getattr(subprocess, "CREATE_NO_WINDOW", 0)  # no console flashing up on Windows


class DependencyError(Exception):
    """The dependencies cannot be handled automatically; ``str(err)`` is one sentence."""


def log(message: str, level: Qgis.MessageLevel = Qgis.Info) -> None:
    """Write to the "TCD" tab of the Log Messages panel (safe from any thread)."""
    QgsMessageLog.logMessage(message, LOG_TAG, level)


def log_report(heading: str, report: str, level: Qgis.MessageLevel = Qgis.Info) -> None:
    """Log a report laid out in columns (the doctor's package table) so that it keeps them.

    QGIS's Log Messages panel shows each message as HTML in a proportional font: runs of
    spaces collapse and the columns with them. In ``<pre>`` they keep their width; the panel
    indents every line after a newline, so each line of the report starts after one.
    """
    lines = "".join(f"\n{html.escape(line)}" for line in report.splitlines())
    log(f"{html.escape(heading)}<pre>{lines}</pre>", level)


# --------------------------------------------------------------------------- the folder


def package_dir() -> Path:
    """The plugin-owned folder of installed packages for this QGIS profile and Python version."""
    profile = Path(QgsApplication.qgisSettingsDirPath())
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    return profile / "python" / "dependencies" / "tcd_qgis_plugin" / version


def _top_level_name(entry: str) -> str:
    """``numpy-1.24.2.dist-info`` / ``numpy.libs`` / ``sip.cpython-311.so`` -> ``numpy`` / ``numpy`` / ``sip``."""
    stem = re.split(r"[-.]", entry, maxsplit=1)[0]
    return stem.lower()


def _project(name: str) -> str:
    """A distribution name in the form :data:`PROTECTED` uses (``PyQt5-sip`` -> ``pyqt5_sip``)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _remove_protected(folder: Path) -> list[str]:
    """Delete what QGIS provides (numpy, GDAL, PyQt, ...) from ``folder``; return what went."""
    removed = []
    if not folder.is_dir():
        return removed
    for entry in sorted(folder.iterdir()):
        if _top_level_name(entry.name) in PROTECTED:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry.name)
    return removed


def activate(target: Path | None = None) -> None:
    """Make the packages in the plugin's folder importable, after QGIS's own.

    Idempotent. Call it first in ``classFactory``, and again after an install:
    it also drops the import system's cached directory listings, so packages
    that were just installed import in the same session.
    """
    folder = Path(target) if target else package_dir()
    folder.mkdir(parents=True, exist_ok=True)
    removed = _remove_protected(folder)
    if removed:
        log(f"Removed {', '.join(removed)} from {folder}: QGIS provides them.", Qgis.Warning)
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
    importlib.invalidate_caches()


# --------------------------------------------------------------------------- what is missing


def requirements():
    """The runtime requirements from the plugin's ``requirements.txt``.

    Returns ``tcd_qgis_plugin.engine.doctor.Requirement`` objects (``name``, ``spec``, ...). The file
    sits beside the ``engine`` package: the plugin folder in the ZIP, the
    repository root in a checkout.
    """
    return doctor.read_requirements()


def missing(reqs=None):
    """The requirements QGIS's Python lacks, each with ``found_version``,
    ``location`` and a one-sentence ``reason``. Reads package metadata only."""
    return doctor.missing(requirements() if reqs is None else reqs)


# --------------------------------------------------------------------------- QGIS's Python


def _probe(python: Path) -> tuple | None:
    """(major, minor), prefix, base_prefix of an interpreter, or None if it does not run."""
    code = "import sys; print(repr((tuple(sys.version_info[:2]), sys.prefix, sys.base_prefix)))"
    try:
        out = subprocess.run(
            [str(python), "-c", code],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            creationflags=_NO_WINDOW,
        )
        return ast.literal_eval(out.stdout.strip()) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError, SyntaxError):
        return None


def _same_path(a: str, b: str) -> bool:
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def _candidates() -> list[Path]:
    """Places QGIS's Python interpreter lives in, most likely first."""
    major, minor = sys.version_info[:2]
    exe = Path(sys.executable)
    found = []
    if exe.name.lower().startswith("python"):
        found.append(exe)  # a plain Python run (tests, scripts) or a venv
    for prefix in dict.fromkeys([sys.exec_prefix, sys.prefix]):
        base = Path(prefix)
        if os.name == "nt":
            # OSGeo4W and the standalone installer, QGIS 3 and 4 alike: <root>/apps/Python3x/python.exe
            # (Python312 and newer for QGIS 4), with <root>/bin/python3.exe beside qgis-bin.exe.
            found += [base / "python.exe", base / "python3.exe", base.parent.parent / "bin" / "python3.exe"]
        else:
            found += [base / "bin" / f"python{major}.{minor}", base / "bin" / "python3"]
    if sys.platform == "darwin":
        # QGIS 3's app: Contents/MacOS/bin/python3. QGIS 4's: Contents/MacOS/python (a wrapper that
        # sets PYTHONHOME to Contents/Frameworks, this process's prefix) beside python3.12.
        found += [exe.parent / "bin" / "python3", exe.parent / "bin" / f"python{major}.{minor}",
                  exe.parent / "python", exe.parent / f"python{major}.{minor}"]
    for name in (f"python{major}.{minor}", "python3", "python"):
        which = shutil.which(name)
        if which:
            found.append(Path(which))
    return [p for p in dict.fromkeys(found) if p.is_file()]


@lru_cache(maxsize=1)
def find_qgis_python() -> Path:
    """QGIS's own Python interpreter: same version and same installation as this process.

    Inside desktop QGIS ``sys.executable`` is QGIS itself (or on Linux sometimes
    another ``python3`` first on PATH), so each candidate is run and must report
    this process's ``sys.version_info[:2]``, ``sys.prefix`` and ``sys.base_prefix``.
    """
    wanted = tuple(sys.version_info[:2])
    tried = []
    for candidate in _candidates():
        tried.append(str(candidate))
        probe = _probe(candidate)
        if probe is None:
            continue
        version, prefix, base_prefix = probe
        if tuple(version) == wanted and _same_path(prefix, sys.prefix) and _same_path(base_prefix, sys.base_prefix):
            return candidate
    raise DependencyError(
        f"QGIS's own Python {wanted[0]}.{wanted[1]} (prefix {sys.prefix}) could not be found"
        f" (tried: {', '.join(tried) or 'nothing found'})."
    )


def worker_environment(target: Path | None = None) -> dict:
    """Environment for a child process run with :func:`find_qgis_python`.

    PYTHONPATH: any PYTHONPATH QGIS itself was started with (so the child sees
    what QGIS sees), then the plugin's package folder. The plugin itself is not
    on it: :mod:`tcd_qgis_plugin.core.task` loads it by file location. The folder is
    cleared of protected packages first, because on PYTHONPATH it comes before
    site-packages.
    """
    folder = Path(target) if target else package_dir()
    _remove_protected(folder)
    env = dict(os.environ)
    existing = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([*existing, str(folder)]))
    if sys.flags.no_user_site:
        env["PYTHONNOUSERSITE"] = "1"
    else:
        env.pop("PYTHONNOUSERSITE", None)
    return env


# --------------------------------------------------------------------------- installing


@dataclass
class InstallResult:
    """How an install went. ``message`` is the sentence for the message bar;
    ``command`` is what to run by hand; ``output`` is pip's full output."""

    ok: bool
    message: str
    command: str = ""
    output: str = ""
    installed: list[str] = field(default_factory=list)


def _quote(args: list[str]) -> str:
    if os.name == "nt":
        return subprocess.list2cmdline(args)
    return shlex.join(args)


def _pip_cause(output: str, wheel_dir: str | None, numpy_version: str | None) -> str:
    """What went wrong, in words, from pip's output."""
    text = output.lower()
    not_found = re.search(r"no matching distribution found for ([^\s]+)", output, re.IGNORECASE)
    if "no module named pip" in text:
        return "QGIS's Python has no pip (on Debian or Ubuntu: sudo apt install python3-pip)"
    if any(
        marker in text
        for marker in (
            "newconnectionerror",
            "failed to establish a new connection",
            "temporary failure in name resolution",
            "name or service not known",
            "network is unreachable",
            "proxyerror",
            "connecttimeout",
            "read timed out",
            "certificate_verify_failed",
        )
    ):
        return "pip could not reach the package index (no network, or a proxy or firewall in the way)"
    if "resolutionimpossible" in text or "conflicting dependencies" in text:
        return f"the requirements cannot be met together with QGIS's numpy {numpy_version}"
    if not_found and wheel_dir:
        return f"the wheel folder {wheel_dir} has no file for {not_found[1]}"
    if not_found:
        return f"pip found no version of {not_found[1]} for this QGIS's Python"
    if "permission denied" in text or "errno 13" in text:
        return "the dependency folder is not writable"
    return "pip failed"


class InstallTask(QgsTask):
    """Runs pip with QGIS's Python; all pip output goes to the "TCD" log tab.

    ``run()`` touches no widget and no project; :meth:`finished` (main thread)
    reactivates the folder, re-checks, reports and calls ``on_finished(result)``.
    """

    def __init__(
        self,
        specs: list[str],
        folder: Path,
        wheel_dir: str | None,
        on_finished: Callable[[InstallResult], None] | None,
        iface,
        reqs,
    ):
        super().__init__("Installing TCD dependencies", QgsTask.Flag.CanCancel)
        self.specs = specs
        self.folder = folder
        self.wheel_dir = wheel_dir
        self.on_finished = on_finished
        self.iface = iface
        self.reqs = reqs
        self.result: InstallResult | None = None
        self.extra_index_url: str | None = None  # another index beside PyPI (PyTorch's CPU builds)
        self._output: list[str] = []
        self._steps = 0
        self.pins = {r.name: r.found_version for r in doctor.provided_by_qgis() if r.found_version}
        self.constraints = folder.parent / "constraints.txt"

    # ---- worker thread

    def _index_options(self) -> list[str]:
        if self.wheel_dir:
            return ["--no-index", "--find-links", str(self.wheel_dir)]
        return ["--extra-index-url", self.extra_index_url] if self.extra_index_url else []

    def manual_command(self, python: str) -> str:
        """One pip command a user can run in a terminal to the same effect.

        It may put numpy into the folder too (``--target`` ignores installed
        packages); the plugin removes it again before it is ever used.
        """
        args = [python, "-m", "pip", "install", "--upgrade", "--target", str(self.folder)]
        args += ["--constraint", str(self.constraints), *self._index_options(), *self.specs]
        return _quote(args)

    def _pip(self, python: str, args: list[str], env: dict) -> int:
        command = [python, "-m", "pip", *args]
        log("Running: " + _quote(command))
        base = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1", "PYTHONUNBUFFERED": "1"}
        with subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**env, **base},
            text=True,
            encoding="utf-8",
            errors="replace",
            creationflags=_NO_WINDOW,
        ) as proc:
            for line in proc.stdout:
                line = line.rstrip()
                self._output.append(line)
                log(line)
                if line.lstrip().startswith(("Collecting", "Downloading", "Processing", "Installing", "Would install")):
                    self._steps += 1
                    self.setProgress(min(95.0, 5.0 + 4.0 * self._steps))
                if self.isCanceled():
                    proc.terminate()
            return proc.wait()

    def _pip_version(self, python: str, env: dict) -> tuple[int, int]:
        out = subprocess.run(
            [python, "-m", "pip", "--version"], capture_output=True, text=True, check=False, env=env,
            creationflags=_NO_WINDOW,
        )
        self._output += [out.stdout.strip(), out.stderr.strip()]
        match = re.match(r"pip (\d+)\.(\d+)", out.stdout)
        if out.returncode != 0 or not match:
            raise DependencyError("QGIS's Python has no pip (on Debian or Ubuntu: sudo apt install python3-pip).")
        return int(match[1]), int(match[2])

    def _resolve(self, python: str, env: dict, staging: Path) -> list[str] | None:
        """The exact ``name==version`` list pip would add to what QGIS's Python has; None if pip failed."""
        report = staging.parent / f"{staging.name}.report.json"
        args = ["install", "--dry-run", "--report", str(report), "--progress-bar", "off"]
        args += ["--constraint", str(self.constraints), *self._index_options(), *self.specs]
        if self._pip(python, args, env) != 0:
            return None
        try:
            planned = json.loads(report.read_text(encoding="utf-8"))["install"]
        finally:
            report.unlink(missing_ok=True)
        return [f"{item['metadata']['name']}=={item['metadata']['version']}" for item in planned]

    def _install(self) -> InstallResult:
        if not self.specs:
            return InstallResult(True, "")
        python = str(find_qgis_python())
        self.folder.mkdir(parents=True, exist_ok=True)
        self.constraints.write_text(
            "".join(f"{name}=={version}\n" for name, version in sorted(self.pins.items())), encoding="utf-8"
        )
        command = self.manual_command(python)
        # pip sees what QGIS sees, plus what an earlier install put in our folder.
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            dict.fromkeys([*(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p), str(self.folder)])
        )
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.folder.parent))
        try:
            if self._pip_version(python, env) >= _PIP_WITH_REPORT:
                planned = self._resolve(python, env, staging)
                if planned is None:
                    return self._failed(command)
                clash = [p for p in planned if _project(p.split("==")[0]) in PROTECTED]
                if clash:
                    return InstallResult(
                        False,
                        f"Installing the TCD dependencies would replace {', '.join(clash)}, which QGIS provides, "
                        "so nothing was installed; see the TCD log tab.",
                        command,
                        "\n".join(self._output),
                    )
                args = ["install", "--no-deps", "--target", str(staging), *planned]
            else:
                planned = list(self.specs)
                args = ["install", "--target", str(staging), "--constraint", str(self.constraints), *planned]
            if planned:
                args[1:1] = ["--progress-bar", "off", *self._index_options()]
                if self._pip(python, args, env) != 0:
                    return self._failed(command)
            if self.isCanceled():
                return InstallResult(False, "Installing the TCD dependencies was cancelled.", command)
            removed = _remove_protected(staging)
            if removed:
                log(f"Left out {', '.join(removed)}: QGIS provides them.")
            _move_into(staging, self.folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return InstallResult(True, "", command, "\n".join(self._output), installed=planned)

    def _failed(self, command: str) -> InstallResult:
        output = "\n".join(self._output)
        if self.isCanceled():
            return InstallResult(False, "Installing the TCD dependencies was cancelled.", command, output)
        cause = _pip_cause(output, self.wheel_dir, self.pins.get("numpy"))
        return InstallResult(
            False,
            f"Installing the TCD dependencies failed: {cause}; "
            "the TCD log tab has pip's output and a command to run by hand.",
            command,
            output,
        )

    def run(self) -> bool:
        try:
            self.result = self._install()
        except DependencyError as exc:
            self.result = InstallResult(False, str(exc), output="\n".join(self._output))
        except Exception as exc:  # an exception escaping run() can take QGIS down
            log(traceback.format_exc(), Qgis.Critical)
            self.result = InstallResult(
                False,
                f"Installing the TCD dependencies failed unexpectedly ({type(exc).__name__}: {exc}).",
                output="\n".join(self._output),
            )
        return self.result.ok

    # ---- main thread

    def finished(self, ok: bool) -> None:
        result = self.result or InstallResult(False, "Installing the TCD dependencies was cancelled.")
        if result.ok:
            activate(self.folder)
            still = missing(self.reqs)
            if still:
                result.ok = False
                result.message = (
                    "pip finished, but the TCD dependencies are still not usable: "
                    + " ".join(req.reason for req in still)
                )
            else:
                result.message = "The TCD dependencies are installed and ready; no restart is needed."
                log("Installed: " + (", ".join(result.installed) or "nothing, all requirements were met"))
        if result.ok:
            log(result.message, Qgis.Success)
        else:
            log(result.message, Qgis.Critical)
            if result.command:
                log("To install by hand, close QGIS and run in a terminal:\n" + result.command, Qgis.Critical)
        _show_result(self.iface, result, self)
        if self.on_finished:
            self.on_finished(result)


def _dist_info_project(name: str) -> str:
    """``zope.interface-5.4.dist-info`` -> ``zope_interface``."""
    return _project(name[: -len(".dist-info")].rsplit("-", 1)[0])


def _move_into(staging: Path, folder: Path) -> None:
    """Move every entry of ``staging`` into ``folder``, replacing older copies.

    An older ``name-version.dist-info`` of the same project is removed as well,
    or package metadata would report both versions.
    """
    for entry in staging.iterdir():
        if entry.name.endswith(".dist-info"):
            project = _dist_info_project(entry.name)
            for old in folder.glob("*.dist-info"):
                if _dist_info_project(old.name) == project and old.name != entry.name:
                    shutil.rmtree(old)
        dest = folder / entry.name
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        elif dest.exists() or dest.is_symlink():
            dest.unlink()
        shutil.move(str(entry), str(dest))


_running: list[InstallTask] = []  # keeps a task alive while the task manager runs it


def install(
    wait: bool = False,
    wheel_dir: str | None = None,
    on_finished: Callable[[InstallResult], None] | None = None,
    target: Path | None = None,
    iface=None,
    reqs=None,
    extra_index_url: str | None = None,
) -> InstallTask:
    """Install what :func:`missing` reports, with QGIS's own Python and pip.

    ``wheel_dir``: install offline from that folder of wheel files. ``target``:
    the package folder (default :func:`package_dir`). ``reqs``: the requirements
    to satisfy (default :func:`requirements`). ``wait=True`` runs the install in
    the calling thread and returns when it is done (tests, scripts); otherwise a
    QgsTask runs it with progress. While one runs, another call returns it. The outcome goes to the message bar of
    ``iface`` (default ``qgis.utils.iface``), to the "TCD" log tab and to
    ``on_finished(result)``; the task's ``result`` holds it too.
    """
    if _running:
        log("An install of the TCD dependencies is already running.", Qgis.Warning)
        return _running[0]
    if iface is None:
        from qgis.utils import iface
    folder = Path(target) if target else package_dir()
    reqs = requirements() if reqs is None else reqs
    specs = [req.pip_spec for req in missing(reqs)]
    task = InstallTask(specs, folder, wheel_dir, on_finished, iface, reqs)
    task.extra_index_url = extra_index_url
    log("Installing: " + (", ".join(specs) or "nothing, all requirements are met") + f" into {folder}")
    if wait:
        task.finished(task.run())
        return task
    _running.append(task)
    task.taskCompleted.connect(lambda: _running.remove(task))
    task.taskTerminated.connect(lambda: _running.remove(task))
    QgsApplication.taskManager().addTask(task)
    return task


# --------------------------------------------------------------------------- optional: fine-tuning

# Fine-tuning (Processing tcd:finetunemodel) also needs PyTorch, onnx and Pillow, listed in
# requirements-finetune.txt beside requirements.txt. They are installed only on demand, into
# the same folder and by the same steps (QGIS's numpy and GDAL pinned as constraints), torch
# as the CPU build from PyTorch's own index.
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def finetune_requirements():
    return doctor.read_requirements(Path(doctor.REQUIREMENTS_FILE).with_name("requirements-finetune.txt"))


def missing_for_finetune():
    """The fine-tuning packages QGIS's Python (with the plugin's folder) lacks."""
    return missing(finetune_requirements())


def install_finetune(wait: bool = False, on_finished=None, target: Path | None = None, iface=None) -> InstallTask:
    """Install PyTorch (CPU build), onnx and Pillow for fine-tuning, as :func:`install` installs the rest."""
    return install(wait=wait, on_finished=on_finished, target=target, iface=iface, reqs=finetune_requirements(),
                   extra_index_url=TORCH_CPU_INDEX)


# --------------------------------------------------------------------------- message bar


def _copy(text: str) -> None:
    QApplication.clipboard().setText(text)


MISSING = "missing"  # the kind of the "Python packages to install" message
INSTALL = "install"  # the kind of an install's result


def _show_result(iface, result: InstallResult, task: InstallTask) -> None:
    """The install's outcome on top of the message bar, until closed (the log has it already).

    A success also takes down the "Python packages to install" warning, no longer true.
    """
    if iface is None:
        return
    owner = messages.buttons()
    if result.ok:
        owner.drop(MISSING)
        messages.push_result(iface, result.message, Qgis.Success, task.description(), kind=INSTALL)
        return
    actions = []
    if result.command:
        command = result.command
        actions.append(messages.Action("Copy command", partial(_copy, command), closes=False))
    actions.append(messages.Action("Retry", partial(install, wheel_dir=task.wheel_dir, on_finished=task.on_finished,
                                                    target=task.folder, iface=iface, reqs=task.reqs,
                                                    extra_index_url=task.extra_index_url)))
    messages.push_result(iface, result.message, Qgis.Critical, task.description(), actions, kind=INSTALL)


def show_missing_message(iface, on_install: Callable[[], None], reqs=None):
    """A warning in the message bar naming each missing package, with an
    "Install dependencies…" button that calls ``on_install()``. Returns the
    bar item, or None when nothing is missing (then an earlier warning goes)."""
    owner = messages.buttons()
    absent = missing(reqs)
    if not absent:
        owner.drop(MISSING)
        return None
    names = ", ".join(
        req.name if req.found_version is None else f"{req.pip_spec} (found {req.found_version})" for req in absent
    )
    for req in absent:
        log(req.reason, Qgis.Warning)
    action = messages.Action(QApplication.translate("TCDPlugin", "Install dependencies…"), on_install)
    return owner.push(iface, f"Python packages to install: {names}.", Qgis.Warning, [action], kind=MISSING,
                      log=False)
