"""`python -m engine serve` and `config` with a config file, ENGINE_ variables
and flags: each layer overrides the one before, an --app's options included,
and the README's Configuration section runs as written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest
from harness import ROOT, ServerStartError, start_server

import engine

APP = """
from engine import BayeuxServer, ServerOptions

server = BayeuxServer(ServerOptions(timeout=5000, max_queue=50))
"""


def engine_config(*args: str, cwd: Path, env: dict[str, str] | None = None) -> dict:
    """The effective options `python -m engine config ARGS` prints."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    environ["PYTHONPATH"] = str(ROOT)
    environ.update(env or {})
    out = subprocess.run(
        [sys.executable, "-m", "engine", "config", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return tomllib.loads(out.stdout)


def test_flags_override_the_app_even_at_their_default(tmp_path: Path) -> None:
    (tmp_path / "myapp.py").write_text(APP)
    plain = engine_config("--app", "myapp:server", cwd=tmp_path)
    assert plain["timeout"] == 5000 and plain["max_queue"] == 50  # the app's own
    # --timeout 30000 is the default, and still overrides the app's 5000.
    given = engine_config("--app", "myapp:server", "--timeout", "30000", cwd=tmp_path)
    assert given["timeout"] == 30000 and given["max_queue"] == 50
    # The file and the environment override the app too.
    (tmp_path / "engine.toml").write_text("max_queue = 70\n")
    layered = engine_config(
        "--app",
        "myapp:server",
        "--config",
        "engine.toml",
        cwd=tmp_path,
        env={"ENGINE_TIMEOUT": "8000"},
    )
    assert layered["max_queue"] == 70 and layered["timeout"] == 8000


def test_app_is_found_in_the_app_dir_without_the_cwd_on_sys_path(tmp_path: Path) -> None:
    """`-P` keeps the cwd off sys.path, as for the `bayeux-engine` console
    script: --app still finds a module beside the cwd (--app-dir defaults to
    it), a package's submodule, and a module in another --app-dir."""
    (tmp_path / "myapp.py").write_text(APP)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "site.py").write_text(APP.replace("max_queue=50", "max_queue=60"))

    def config(*args: str, cwd: Path) -> dict:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
        environ["PYTHONPATH"] = str(ROOT)
        out = subprocess.run(
            [sys.executable, "-P", "-m", "engine", "config", *args],
            cwd=cwd, env=environ, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return tomllib.loads(out.stdout)

    assert config("--app", "myapp:server", cwd=tmp_path)["max_queue"] == 50
    assert config("--app", "pkg.site:server", cwd=tmp_path)["max_queue"] == 60
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    given = config("--app", "myapp:server", "--app-dir", str(tmp_path), cwd=elsewhere)
    assert given["max_queue"] == 50
    missing = subprocess.run(
        [sys.executable, "-P", "-m", "engine", "config", "--app", "myapp:server"],
        cwd=elsewhere, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert missing.returncode == 2 and "myapp" in missing.stderr


def test_readme_configuration_example(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Configuration: file, environment, flags")[1].split("\n## ")[0]
    toml_text = re.findall(r"```toml\n(.*?)```", section, re.S)[0]
    commands = re.findall(r"```sh\n(.*?)```", section, re.S)[0]
    # The README's own first command writes the secret file the example names.
    setup = commands.splitlines()[0]
    assert setup.startswith("printf 'change-me' > engine-admin.secret")
    subprocess.run(setup, shell=True, cwd=tmp_path, check=True)
    (tmp_path / "engine.toml").write_text(toml_text)
    assert "python -m engine config --config engine.toml" in commands
    shown = engine_config("--config", "engine.toml", cwd=tmp_path, env={"ENGINE_MAX_QUEUE": "500"})
    assert shown["timeout"] == 20000 and shown["port"] == 8080
    assert shown["allowed_origins"] == "https://app.example.com"
    assert shown["admin_token"] == "***" and shown["max_queue"] == 500
    version = subprocess.run(
        [sys.executable, "-m", "engine", "--version"], capture_output=True, text=True, cwd=ROOT
    )
    assert version.returncode == 0 and version.stdout.strip().endswith(engine.__version__)


def test_bad_configuration_stops_with_the_key_named(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("max_qeue = 5\n")
    for args, message in [
        (["--config", "bad.toml"], "unknown option 'max_qeue' (did you mean 'max_queue'?)"),
        (["--config", "missing.toml"], "missing.toml: no such file"),
    ]:
        out = subprocess.run(
            [sys.executable, "-m", "engine", "serve", *args],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 2 and message in out.stderr, out.stderr


def test_served_with_file_environment_and_secret_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tmp_path / "token"
    token.write_text("t0k\n")
    config = tmp_path / "engine.toml"
    config.write_text(f'timeout = 4000\nadmin_token_file = "{token}"\n')
    monkeypatch.setenv("ENGINE_CONFIG", str(config))
    monkeypatch.setenv("ENGINE_MAX_INTERVAL", "6000")
    try:
        server = start_server(target="engine")
    except ServerStartError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        body = json.dumps(
            [
                {
                    "channel": "/meta/handshake",
                    "version": "1.0",
                    "supportedConnectionTypes": ["long-polling"],
                }
            ]
        ).encode()
        request = urllib.request.Request(server.url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as resp:
            reply = json.loads(resp.read())[0]
        assert reply["advice"]["timeout"] == 4000  # from the file
        assert reply["advice"]["interval"] == 0
        # The admin token read from its file: /stats answers with it.
        stats = server.url.rsplit("/cometd", 1)[0] + "/stats"
        request = urllib.request.Request(stats, headers={"Authorization": "Bearer t0k"})
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert resp.status == 200
        assert "t0k" not in " ".join(server.cmd)  # never on the command line
    finally:
        server.assert_stopped_cleanly()
