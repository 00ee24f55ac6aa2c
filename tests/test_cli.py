"""The basinlab command: help, and one-line errors with exit status 2 for user mistakes."""

import subprocess
import sys

import pytest

from basinlab.launch.cli import main


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(command in out for command in ("prepare", "run", "tune", "report"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "missing.yaml"], "config file 'missing.yaml' does not exist"),
        (["run", "{config}", "--set", "train.max_epoch=3"], "unknown config key 'train.max_epoch'"),
        (["run", "{config}", "--set", "arms.sgd.name=lion"], "unknown optimizer 'lion'"),
        (["report", "{tmp}/nowhere"], "does not exist"),
        (["report", "{tmp}"], "is not a basinlab run directory"),
        (["prepare", "mnist", "--from-idx", "{tmp}/nowhere", "--cache-dir", "{tmp}/cache"], "nowhere"),
    ],
)
def test_user_mistakes_print_one_line_and_exit_2(argv, message, tiny_config, tmp_path, capsys):
    config = tiny_config()
    argv = [a.format(config=config, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("basinlab: error: ") and message in err and "\n" not in err


def test_no_traceback_from_the_real_command(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("arms: [{name: sgd, lr: 0.1}]\ntrain: {batch_size: -4}\n")
    result = subprocess.run([sys.executable, "-m", "basinlab", "run", str(bad)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == "basinlab: error: config key 'train.batch_size' must be >= 1"
