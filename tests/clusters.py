"""Real servers on loopback for the Dask tests: a Dask cluster started with Dask's own commands
(``dask scheduler``, ``dask worker``, each its own process), an S3-compatible server (moto in
server mode) and an HTTP server that answers range requests (``tests/http_server.py``).

Every server is a separate process: GDAL (through rasterio) holds the GIL while it
reads, so a server thread inside the test process would never answer it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    """End a process this module started (and the children of its process group)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


class DaskCluster:
    """A scheduler and workers, each a ``dask`` command in its own process group, on 127.0.0.1."""

    def __init__(self, tmp: Path, env: dict | None = None):
        self.tmp = Path(tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.workers: list[subprocess.Popen] = []
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.scheduler = self._start([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port",
                                      str(self.port), "--no-dashboard"], "scheduler")
        wait_for_port(self.port, self.scheduler)

    def _start(self, args: list[str], name: str, env: dict | None = None) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")
        try:
            return subprocess.Popen(args, cwd=self.tmp, env=env or self.env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        finally:
            log.close()

    def add_worker(self, name: str, *, nanny: bool = True, nthreads: int = 1, pythonpath: Path | None = None,
                   env: dict | None = None) -> subprocess.Popen:
        """Start ``dask worker``; ``pythonpath`` replaces the engine it imports (this checkout by default)."""
        worker_env = {**self.env, **(env or {})}
        if pythonpath is not None:
            worker_env["PYTHONPATH"] = str(pythonpath)
        args = [str(BIN / "dask"), "worker", self.address, "--name", name, "--nthreads", str(nthreads),
                "--no-dashboard", "--host", "127.0.0.1", "--local-directory", str(self.tmp / name)]
        if not nanny:
            args.append("--no-nanny")
        proc = self._start(args, name, worker_env)
        self.workers.append(proc)
        return proc

    def wait_for_workers(self, n: int, timeout_s: float = 90.0) -> None:
        from distributed import Client

        with Client(self.address, set_as_default=False, timeout=30) as client:
            client.wait_for_workers(n, timeout=timeout_s)

    def worker_count(self) -> int:
        from distributed import Client

        with Client(self.address, set_as_default=False, timeout=30) as client:
            return len(client.nthreads())

    def close(self) -> None:
        for proc in self.workers:
            stop(proc)
        stop(self.scheduler)

    def __enter__(self) -> DaskCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class S3Server:
    """moto in server mode on loopback; ``env`` is what GDAL (client and workers) needs to reach it."""

    def __init__(self, tmp: Path):
        self.port = free_port()
        log = open(Path(tmp) / "moto.log", "ab")
        try:
            self.proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        wait_for_port(self.port, self.proc)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_S3_ENDPOINT": f"127.0.0.1:{self.port}", "AWS_HTTPS": "NO",
                    "AWS_VIRTUAL_HOSTING": "FALSE"}

    def upload(self, bucket: str, key: str, path: Path) -> str:
        """Put ``path`` at ``s3://bucket/key``; returns the GDAL path ``/vsis3/bucket/key``."""
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
        try:
            s3.create_bucket(Bucket=bucket)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
        s3.upload_file(str(path), bucket, key)
        return f"/vsis3/{bucket}/{key}"

    def close(self) -> None:
        stop(self.proc)


class HttpServer:
    """``tests/http_server.py`` serving ``folder``; with ``token``, only requests carrying ``X-Token: token``."""

    def __init__(self, folder: Path, tmp: Path, token: str | None = None):
        args = [sys.executable, "-m", "tests.http_server", str(folder)] + (["--token", token] if token else [])
        log = open(Path(tmp) / "http.log", "ab")
        try:
            self.proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, start_new_session=True)
        finally:
            log.close()
        self.port = json.loads(self.proc.stdout.readline())["port"]
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        stop(self.proc)
        self.proc.stdout.close()
