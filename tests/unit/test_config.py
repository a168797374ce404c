"""Options from a TOML file, the environment and the flags (engine.config, engine.cli)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from engine.cli import build_parser, layered_options, options_from_args
from engine.config import ConfigError, from_env, from_file, masked, to_toml
from engine.options import ServerOptions


def write(tmp_path: Path, text: str, name: str = "engine.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = write(tmp_path, "max_queue = 500\ntimeout = 5000\nmax_interval = 7000\n")
    args = build_parser().parse_args(["serve", "--config", str(path), "--timeout", "30000"])
    env = {"ENGINE_MAX_INTERVAL": "2000", "ENGINE_ACK_EXTENSION": "yes"}
    options = options_from_args(args, env)
    assert options.max_queue == 500  # the file
    assert options.max_interval == 2000  # the environment over the file
    assert options.ack_extension is True
    # A flag equal to its default still overrides the file.
    assert options.timeout == 30000
    assert options.port == ServerOptions().port  # untouched: the default


def test_config_file_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "port = 9123\n")
    args = build_parser().parse_args(["serve"])
    assert options_from_args(args, {"ENGINE_CONFIG": str(path)}).port == 9123


def test_only_given_flags_are_layered() -> None:
    args = build_parser().parse_args(["serve", "--port", "8080", "--no-gc-freeze"])
    assert layered_options(args, {}) == {"port": 8080, "gc_freeze": False}


def test_secrets_from_files_and_masked(tmp_path: Path) -> None:
    token = write(tmp_path, "s3cret\n", "token")
    url = write(tmp_path, "redis://:pw@127.0.0.1:6379/0\n", "url")
    path = write(tmp_path, f'admin_token_file = "{token}"\n')
    assert from_file(path) == {"admin_token": "s3cret"}
    assert from_env({"ENGINE_BROKER_FILE": str(url)}) == {"broker": "redis://:pw@127.0.0.1:6379/0"}
    args = build_parser().parse_args(["serve", "--admin-token-file", str(token)])
    options = options_from_args(args, {"ENGINE_BROKER_FILE": str(url)})
    assert options.admin_token == "s3cret"
    shown = masked(options)
    assert shown["admin_token"] == "***"
    assert shown["broker"] == "redis://:***@127.0.0.1:6379/0"
    assert "s3cret" not in to_toml(shown) and "pw" not in to_toml(shown)


def test_printed_config_loads_back(tmp_path: Path) -> None:
    options = ServerOptions(port=9000, allowed_origins='https://a.example, "x"', timeout_jitter=0.2)
    text = to_toml(masked(options))
    assert tomllib.loads(text)["allowed_origins"] == 'https://a.example, "x"'
    assert ServerOptions(**from_file(write(tmp_path, text))) == options


@pytest.mark.parametrize(
    "text,message",
    [
        ("max_qeue = 5\n", "unknown option 'max_qeue' (did you mean 'max_queue'?)"),
        ('max_queue = "5"\n', "max_queue must be an integer, not '5'"),
        ("max_queue = true\n", "max_queue must be an integer, not True"),
        ("ack_extension = 1\n", "ack_extension must be true or false, not 1"),
        ("host = 1\n", "host must be a string, not 1"),
        ("admin_token_file = 3\n", "admin_token_file must be a string (a path), not 3"),
        ("port = \n", "not valid TOML"),
        ('admin_token_file = "/nonexistent/token"\n', "admin_token_file: cannot read"),
    ],
)
def test_bad_files_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        from_file(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="no such file"):
        from_file("/nonexistent/engine.toml")


def test_environment_types_and_unknown_names() -> None:
    assert from_env({"ENGINE_TIMEOUT_JITTER": "0.25", "ENGINE_GC_FREEZE": "off"}) == {
        "timeout_jitter": 0.25,
        "gc_freeze": False,
    }
    with pytest.raises(ConfigError, match="ENGINE_TIMEOUT: timeout must be an integer, not 'abc'"):
        from_env({"ENGINE_TIMEOUT": "abc"})
    with pytest.raises(ConfigError, match="ENGINE_ACK_EXTENSION: ack_extension must be true or"):
        from_env({"ENGINE_ACK_EXTENSION": "maybe"})
    unknown: list[str] = []
    # Unrelated variables with the prefix are reported, not fatal; the
    # project's own switches are not options at all.
    env = {"ENGINE_TIMOUT": "1", "ENGINE_TEST_WHEEL": "1", "ENGINE_WORKER_OPTIONS": "{}"}
    assert from_env(env, unknown) == {}
    assert unknown == [
        "environment variable ENGINE_TIMOUT: unknown option 'timout' (did you mean 'timeout'?)"
    ]


def test_values_still_validated_by_server_options(tmp_path: Path) -> None:
    args = build_parser().parse_args(["serve", "--config", str(write(tmp_path, "port = 70000\n"))])
    with pytest.raises(ValueError, match="port must be within 0..65535"):
        options_from_args(args, {})


def test_every_secret_is_masked() -> None:
    from engine.config import SECRETS

    options = ServerOptions(api_key="k-e-y", jwt_secret="j-w-t", admin_token="a-d-m")
    shown = to_toml(masked(options))
    for value in ("k-e-y", "j-w-t", "a-d-m"):
        assert value not in shown
    assert {"api_key", "jwt_secret", "jwt_public_key"} <= set(SECRETS)


def test_url_passwords_masked_in_any_text() -> None:
    from engine.config import mask_password

    text = "redis at redis://u:pw1@h:6379/0, then https://:pw2@example.com/jwks failed"
    assert mask_password(text) == (
        "redis at redis://u:***@h:6379/0, then https://:***@example.com/jwks failed"
    )
    assert mask_password("redis://h:6379/0 user@example.com") == "redis://h:6379/0 user@example.com"


def test_a_secret_of_the_wrong_type_is_not_shown(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="admin_token must be a string, not int") as caught:
        from_file(write(tmp_path, "admin_token = 987654321\n"))
    assert "987654321" not in str(caught.value)
