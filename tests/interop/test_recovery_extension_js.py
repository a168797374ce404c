"""The unit tests of engine/static/cometd-recovery.js (recovery_extension.test.mjs,
node's own test runner; no server), and its package.json."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

import engine

INTEROP_DIR = Path(__file__).resolve().parent
STATIC = Path(engine.__file__).resolve().parent / "static"


def test_extension_unit_tests(node_bin: str) -> None:
    proc = subprocess.run(
        [node_bin, "--test", "recovery_extension.test.mjs"],
        cwd=INTEROP_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "# fail 0" in proc.stdout, proc.stdout[-2000:]


def test_package_json_names_the_file_and_the_engine_version() -> None:
    package = json.loads((STATIC / "package.json").read_text())
    assert package["type"] == "module"
    assert package["exports"] == {".": "./cometd-recovery.js"}
    assert (STATIC / package["main"]).is_file()
    assert package["version"] == engine.__version__


def test_npm_installs_the_directory_as_a_package(node_bin: str, tmp_path: Path) -> None:
    """`npm install <site-packages>/engine/static` (offline: a local folder),
    then a bare import by the package's name."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed")
    (tmp_path / "package.json").write_text('{"name": "app", "private": true, "type": "module"}')
    quiet = ["--offline", "--no-audit", "--no-fund"]
    subprocess.run([npm, "install", *quiet, str(STATIC)], cwd=tmp_path, check=True, timeout=120)
    script = (
        'import {RecoveryExtension} from "bayeux-engine-recovery";'
        "console.log(JSON.stringify(new RecoveryExtension().positions()));"
    )
    proc = subprocess.run(
        [node_bin, "--input-type=module", "-e", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "{}", proc.stderr
