"""The plugin's worker process driven as the plugin drives it, for tests that need a bare one."""

import json
import subprocess
import sys


def drive_worker(job_json: dict, *, cwd, env=None) -> tuple[list[dict], str]:
    """Start the worker as the plugin starts it, send one job and read its events up to
    ``finished`` or ``error``; returns the events and the worker's stderr."""
    from tcd_qgis_plugin.core.launch import engine_command

    proc = subprocess.Popen(engine_command(sys.executable, "worker"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd, env=env)
    proc.stdin.write(json.dumps(job_json) + "\n")
    proc.stdin.flush()  # kept open: end of input would mean the parent is gone, so cancel
    events = []
    for line in proc.stdout:
        events.append(json.loads(line))
        if events[-1]["event"] in ("finished", "error"):
            break
    proc.stdin.close()
    proc.wait(timeout=60)
    stderr = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    return events, stderr
