"""The bench recipes (bench/idle.py, fanout.py, ...): each one's defaults are
the parameters of the README figure it names, so the README's command and the
bare recipe run the same scenario."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from types import ModuleType

import pytest
from harness import ROOT

from engine.load.recipe import expand

RECIPES = ("idle", "fanout", "churn", "hostile")


def recipe(name: str) -> ModuleType:
    """bench/<name>.py as a module (its __main__ block does not run)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def readme_commands(script: str) -> list[list[str]]:
    """The arguments of every `python bench/<script>` in the README's Performance table."""
    section = (ROOT / "README.md").read_text().split("## Performance", 1)[1].split("\n## ", 1)[0]
    found = re.findall(rf"`python bench/{script} ?([^`]*)`", section)
    return [shlex.split(args) for args in found]


def parsed(name: str, argv: list[str]) -> dict[str, object]:
    """What the scenario parses from the recipe's expanded arguments."""
    module = recipe(name)
    scenario = importlib.import_module(f"engine.load.{name}")
    args = expand(module.FIGURE, argv, module.WITHOUT_PEER)
    return vars(scenario.build_parser().parse_args(args))


README_FIGURES = {
    # recipe: the README's `engine load --compare` row it reproduces, with
    # servers it starts itself (Faye first, then the engine)
    "idle": ["--clients", "19000", "--transport", "websocket", "--peer", "faye"],
    "fanout": ["--clients", "19000", "--subscribers", "1900", "--messages", "500",
               "--rate", "50", "--transport", "websocket", "--peer", "faye"],
}  # fmt: skip


@pytest.mark.parametrize("name", ["idle", "fanout"])
def test_the_bare_recipe_is_the_readme_figure(name: str) -> None:
    assert parsed(name, []) == parsed(name, README_FIGURES[name])
    # Every README command of the recipe still parses (the peer only where it can run).
    for argv in readme_commands(f"{name}.py"):
        values = parsed(name, argv)
        assert values["peer"] == ("faye" if "--peer" in argv else None), argv


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_help_is_the_scenario_help(name: str) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{name}.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "--results-dir" in done.stdout
