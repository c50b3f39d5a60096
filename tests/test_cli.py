"""The `tpo` command tree: one convention (add_arguments + run), nested groups, lazy imports
that fail loudly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tpo import cli

TPO = str(Path(sys.executable).with_name("tpo"))


def _tpo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([TPO, *args], capture_output=True, text=True, timeout=120)


def _leaves(commands, path=()):
    for name, cmd in commands.items():
        if isinstance(cmd, cli.Group):
            yield from _leaves(cmd.commands, (*path, name))
        else:
            yield (*path, name), cmd


def test_help_lists_every_command_without_importing_them():
    code = (
        "import sys; from tpo.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print([m for m in ('torch', 'tpo.popen.train_cli', 'tpo.eval.run_cli') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    for name in ("toyworld", "train", "export", "ask", "eval", "popen"):
        assert f"    {name}" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_nested_help_lists_subcommands_and_leaf_help_its_flags():
    out = _tpo("popen", "--help")
    assert out.returncode == 0, out.stderr
    assert "collect" in out.stdout and "diff" in out.stdout and "evaluate" in out.stdout
    out = _tpo("eval", "run", "--help")
    assert out.returncode == 0, out.stderr
    assert "usage: tpo eval run" in out.stdout and "--checkpoint" in out.stdout
    out = _tpo("eval", "nope")
    assert out.returncode == 2 and "invalid choice: 'nope'" in out.stderr


def test_every_command_module_has_the_two_functions():
    import argparse
    import importlib

    for path, cmd in _leaves(cli.COMMANDS):
        module = importlib.import_module(cmd.module)
        parser = argparse.ArgumentParser(prog="tpo " + " ".join(path))
        module.add_arguments(parser)  # raises on a clash of flags
        assert callable(module.run), cmd.module


def test_a_command_whose_module_fails_to_import_is_an_error_naming_it(
    tmp_path, monkeypatch, capsys
):
    (tmp_path / "broken_cmd.py").write_text("import not_installed_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    group = cli.Group("a group", {"broken": cli.Command("broken_cmd", "fails to import")})
    monkeypatch.setattr(cli, "COMMANDS", {**cli.COMMANDS, "grp": group})
    assert cli.main(["grp", "broken", "--x"]) == 1
    err = capsys.readouterr().err
    assert "tpo grp broken: cannot import its module broken_cmd" in err
    assert "not_installed_dependency_xyz" in err
    with pytest.raises(SystemExit):  # still listed in the help: nothing dropped
        cli.main(["grp", "--help"])
    assert "broken" in capsys.readouterr().out


def test_a_module_without_run_is_an_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "half_cmd.py").write_text("def add_arguments(parser):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "COMMANDS", {"half": cli.Command("half_cmd", "no run")})
    assert cli.main(["half"]) == 1
    assert "half_cmd defines no run()" in capsys.readouterr().err


def test_leaf_runs_with_its_parsed_arguments(tmp_path, monkeypatch, capsys):
    (tmp_path / "echo_cmd.py").write_text(
        "def add_arguments(parser):\n    parser.add_argument('--n', type=int, required=True)\n"
        "def run(args):\n    print('n =', args.n)\n    return 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    group = cli.Group("g", {"echo": cli.Command("echo_cmd", "echo")})
    monkeypatch.setattr(cli, "COMMANDS", {"g": group})
    assert cli.main(["g", "echo", "--n", "7"]) == 3
    assert capsys.readouterr().out == "n = 7\n"
    with pytest.raises(SystemExit):
        cli.main(["g", "echo", "--n", "x"])
    assert "invalid int value: 'x'" in capsys.readouterr().err
