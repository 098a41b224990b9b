#!/usr/bin/env bash
# Run the plugin tests (tests/plugin) against other QGIS versions, each in a throwaway
# Debian chroot made with debootstrap. Run as root on a Debian or Ubuntu machine:
#
#   bash scripts/test_qgis_versions.sh [--workdir DIR] [--keep] [--mirror URL] [VERSION ...] [-- PYTEST ARGS]
#
# VERSION (default: 3.22 3.44):
#   3.22  Debian 12 bookworm             (Python 3.11, numpy 1.24, GDAL 3.6)
#   3.40  Debian 12 bookworm-backports   (Python 3.11, numpy 1.24, GDAL 3.6; the platform of install.sh)
#   3.44  Debian sid                     (Python 3.14, numpy 2, GDAL 3.11+); sid moves, so this
#         is whatever QGIS sid has that day: the script prints the version it tested.
#
# For each version: debootstrap a minimal system into DIR/qgis-VERSION (DIR: a new folder
# in /var/tmp unless --workdir), install Debian's QGIS Python bindings, copy this
# checkout in (tracked and untracked files that git does not ignore), make a venv with
# --system-site-packages there, pip-install requirements-dev.txt into it, and run
#   python -m pytest tests/plugin PYTEST_ARGS
# offscreen. The host's extra CA certificates (/usr/local/share/ca-certificates) are
# copied in, for machines behind a TLS-inspecting proxy. /proc, /sys, a private /dev and
# /dev/pts are mounted into the chroot and unmounted on any exit; the chroot is deleted
# unless --keep (then it is reused by the next run with the same --workdir).
# Ends with one line per version: QGIS, Python, numpy, GDAL and pytest's counts; exits
# non-zero if any version failed. Needs debootstrap (apt-get install debootstrap), about
# 3 GB of disk per version and network access to the Debian mirror and to PyPI.
set -euo pipefail

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORKDIR=""
KEEP=0
MIRROR="http://deb.debian.org/debian"
VERSIONS=()
PYTEST_ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --workdir) WORKDIR="$2"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --mirror) MIRROR="$2"; shift 2 ;;
        --) shift; PYTEST_ARGS=("$@"); break ;;
        3.22|3.40|3.44) VERSIONS+=("$1"); shift ;;
        -h|--help) usage ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
done
[ ${#VERSIONS[@]} -gt 0 ] || VERSIONS=(3.22 3.44)
[ "$(id -u)" = 0 ] || { echo "run as root (debootstrap, chroot and mount need it)" >&2; exit 2; }
command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 2; }
if [ -z "$WORKDIR" ]; then
    WORKDIR="$(mktemp -d /var/tmp/tcd-qgis-versions.XXXXXX)"
fi
mkdir -p "$WORKDIR"
WORKDIR="$(cd "$WORKDIR" && pwd)"

# Every mount point under $1, deepest first (from the kernel's table, so that mounts left
# by an interrupted debootstrap are found too).
mounts_under() {
    awk -v root="$1" '$2 == root || index($2, root "/") == 1 { print $2 }' /proc/self/mounts | sort -r
}

unmount_all() {
    local root="$1" point
    for point in $(mounts_under "$root"); do
        umount "$point" 2>/dev/null || umount -l "$point"
    done
}

CURRENT_ROOT=""
cleanup() {
    local status=$?
    if [ -n "$CURRENT_ROOT" ]; then
        unmount_all "$CURRENT_ROOT"
        remove_root "$CURRENT_ROOT"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

remove_root() {
    [ "$KEEP" = 1 ] && { echo "kept $1"; return; }
    remove_root_anyway "$1"
}

remove_root_anyway() {
    local root="$1"
    # Never delete through a mount: that would delete the host's files.
    if [ -n "$(mounts_under "$root")" ]; then
        echo "not deleting $root: still mounted: $(mounts_under "$root" | tr '\n' ' ')" >&2
        return 1
    fi
    rm -rf --one-file-system "$root"
}

mount_all() {
    local root="$1" node
    mount -t proc proc "$root/proc"
    mount -t sysfs -o ro sysfs "$root/sys" 2>/dev/null || mount --bind -o ro /sys "$root/sys"
    # A private /dev with only the nodes programs expect, never the host's whole /dev.
    mount -t tmpfs -o mode=0755,nosuid tmpfs "$root/dev"
    for node in null zero full random urandom tty; do
        touch "$root/dev/$node"
        mount --bind "/dev/$node" "$root/dev/$node"
    done
    mkdir -p "$root/dev/pts" "$root/dev/shm"
    mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$root/dev/pts"
    ln -sf pts/ptmx "$root/dev/ptmx"
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm"
    ln -sf /proc/self/fd "$root/dev/fd"
    ln -sf /proc/self/fd/0 "$root/dev/stdin"
    ln -sf /proc/self/fd/1 "$root/dev/stdout"
    ln -sf /proc/self/fd/2 "$root/dev/stderr"
}

in_root() {
    local root="$1"; shift
    env -i HOME=/root LANG=C.UTF-8 LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 \
        chroot "$root" "$@"
}

# Makes the system in $root (suite $2) and installs QGIS's Python bindings there.
make_root() {
    local root="$1" suite="$2" apt_target="$3"
    if [ ! -f "$root/.tcd-ready" ]; then
        unmount_all "$root"
        remove_root_anyway "$root"
        debootstrap --variant=minbase --include=ca-certificates "$suite" "$root" "$MIRROR"
    fi
    mount_all "$root"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
    in_root "$root" update-ca-certificates >/dev/null
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"  # no services start in the chroot
    chmod +x "$root/usr/sbin/policy-rc.d"
    case "$suite" in
        bookworm)
            printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s bookworm-backports main\n' \
                "$MIRROR" "$MIRROR" "$MIRROR" >"$root/etc/apt/sources.list" ;;
        sid)
            printf 'deb %s sid main\n' "$MIRROR" >"$root/etc/apt/sources.list"
            # A mirror or cache that lags behind sid serves a Release file past its Valid-Until.
            echo 'Acquire::Check-Valid-Until "false";' >"$root/etc/apt/apt.conf.d/90tcd-valid-until" ;;
    esac
    in_root "$root" apt-get update -q
    # python3-qgis brings qgis.core/gui and the Processing plugin; qgis-providers the
    # GDAL/OGR and memory providers; python3-venv and pip for the test venv.
    in_root "$root" apt-get install -y -q --no-install-recommends ${apt_target:+-t "$apt_target"} \
        python3-qgis qgis-providers python3-venv python3-pip python3-numpy
    touch "$root/.tcd-ready"
}

# Copies this checkout into $root/src, makes the venv there and runs the plugin tests.
run_tests() {
    local root="$1" log="$2"
    rm -rf "$root/src"
    mkdir -p "$root/src"
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
        | xargs -0 sh -c 'for f; do [ -e "$f" ] || [ -L "$f" ] && printf "%s\0" "$f"; done' sh \
        | tar --null -T - -cf -) | tar -xf - -C "$root/src"
    [ -x "$root/venv/bin/python" ] || in_root "$root" python3 -m venv --system-site-packages /venv
    in_root "$root" /venv/bin/python -m pip install -q -r /src/requirements-dev.txt
    in_root "$root" sh -c 'cd /src && QT_QPA_PLATFORM=offscreen /venv/bin/python -m pytest -p no:cacheprovider \
        --junitxml=/src/plugin-tests.xml tests/plugin "$@"' sh "${PYTEST_ARGS[@]}" 2>&1 | tee "$log" || true
}

# One result line: QGIS, Python, numpy, GDAL, and the counts from pytest's JUnit XML.
summarise() {
    local root="$1" version="$2"
    local facts counts
    facts="$(in_root "$root" /venv/bin/python -c '
import sys, numpy
from osgeo import gdal
from qgis.core import Qgis
qgis = Qgis.QGIS_VERSION.split("-")[0]
print(f"QGIS {qgis}, Python {sys.version.split()[0]}, numpy {numpy.__version__}, GDAL {gdal.__version__}")
' 2>/dev/null || echo "QGIS $version: the bindings do not import")"
    counts="$(python3 - "$root/src/plugin-tests.xml" <<'EOF'
import sys
import xml.etree.ElementTree as ET
try:
    suites = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError):
    print("no results (pytest crashed)")
    raise SystemExit
suite = suites if suites.tag == "testsuite" else suites.find("testsuite")
tests, failures, errors, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
print(f"{tests - failures - errors - skipped} passed, {failures} failed, {errors} errors, {skipped} skipped")
EOF
)"
    echo "$facts: $counts"
}

declare -A SUITE=([3.22]=bookworm [3.40]=bookworm [3.44]=sid)
declare -A TARGET=([3.22]="" [3.40]=bookworm-backports [3.44]="")
RESULTS=()
STATUS=0
for version in "${VERSIONS[@]}"; do
    root="$WORKDIR/qgis-$version"
    log="$WORKDIR/qgis-$version.log"
    CURRENT_ROOT="$root"
    where="${SUITE[$version]}${TARGET[$version]:+ ${TARGET[$version]}}"
    echo "=== QGIS $version: Debian $where, in $root"
    # Each step in a subshell with errexit of its own (errexit is off inside an if or ||), so
    # that a version whose packages do not install is reported and the next one still runs.
    set +e
    (set -e; make_root "$root" "${SUITE[$version]}" "${TARGET[$version]}")
    steps=$?
    if [ "$steps" = 0 ]; then
        (set -e; run_tests "$root" "$log")
        steps=$?
    fi
    set -e
    if [ "$steps" = 0 ]; then
        line="$(summarise "$root" "$version")"
    else
        line="QGIS $version (Debian $where): the chroot, QGIS or the pip packages did not install (exit status $steps; see the output above)"
    fi
    case "$line" in *" 0 failed, 0 errors"*) ;; *) STATUS=1 ;; esac
    RESULTS+=("$line")
    cp "$root/src/plugin-tests.xml" "$WORKDIR/qgis-$version.xml" 2>/dev/null || true
    unmount_all "$root"
    remove_root "$root"
    CURRENT_ROOT=""
done
echo "=== results (logs in $WORKDIR)"
printf '%s\n' "${RESULTS[@]}"
exit "$STATUS"
