"""Print the device this machine serves on, `gpu` or `cpu`: the lock `make install` installs.

    python3 -m scripts.device

A machine is a GPU machine when the NVIDIA driver is found: `nvidia-smi` runs, or the driver's
/proc/driver/nvidia exists (a container given a GPU has one or both). Standard library only:
`make install` runs this before any virtual environment exists.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

NVIDIA_PROC = Path("/proc/driver/nvidia")


def nvidia_smi_works(path: str | None = None) -> bool:
    """True when `nvidia-smi` is on PATH (or `path`) and lists a GPU."""
    exe = shutil.which("nvidia-smi", path=path)
    if exe is None:
        return False
    try:
        return subprocess.run([exe, "-L"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def detect_device(proc_driver: Path = NVIDIA_PROC, path: str | None = None) -> str:
    return "gpu" if proc_driver.exists() or nvidia_smi_works(path) else "cpu"


if __name__ == "__main__":
    print(detect_device())
    sys.exit(0)
