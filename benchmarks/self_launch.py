"""What the torchrun benchmarks share: their options, and launching their own file under
``torch.distributed.run`` whose rank 0 writes one JSON row per rank."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def parse_arguments(description: str, windows_of: str) -> argparse.Namespace:
    """--frequency, --windows and --threads, plus the hidden --worker / --output of a launched rank."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--frequency", type=int, default=10, help="Shampoo precondition_frequency (default 10)")
    parser.add_argument("--windows", type=int, default=3, help=f"timing windows per {windows_of} (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank (default 1)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.frequency < 1 or args.windows < 1 or args.threads < 1:
        parser.error("--frequency, --windows and --threads must be positive")
    return args


def launch(script: str, world_size: int, args: argparse.Namespace) -> list[dict]:
    """Run ``script --worker`` on ``world_size`` ranks (one thread each unless --threads); its rows."""
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "rows.json"
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world_size), script, "--worker",
            "--output", str(output), "--frequency", str(args.frequency), "--windows", str(args.windows),
            "--threads", str(args.threads),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
        return json.loads(output.read_text())
