"""The public surface: what `engine` exports is what the README and the examples use."""

from __future__ import annotations

import ast
import re
import textwrap

import pytest
from harness import ROOT

import engine

DOCUMENTED = {
    "BayeuxServer",
    "ServerOptions",
    "Session",
    "LocalSession",
    "Extension",
    "TimesyncExtension",
    "SecurityPolicy",
    "GRANT",
    "IGNORE",
    "deny",
    "Deny",
    "HttpContext",
    "current_context",
    "JwtPolicy",
}


def test_exports_are_the_documented_api() -> None:
    assert set(engine.__all__) == DOCUMENTED
    for name in engine.__all__:
        assert getattr(engine, name) is not None


def _engine_imports(source: str) -> list[tuple[str, str]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("engine"):
            found.extend((node.module, alias.name) for alias in node.names)
    return found


def test_examples_and_readme_use_only_the_public_surface() -> None:
    sources = [p.read_text() for p in sorted((ROOT / "examples").glob("*.py"))]
    readme = (ROOT / "README.md").read_text()
    # (Blocks inside a list item are indented: dedented as Markdown reads them.)
    sources += [textwrap.dedent(b) for b in re.findall(r"```python\n(.*?)```", readme, re.S)]
    imports = [i for source in sources for i in _engine_imports(source)]
    assert imports, "no engine import found: the test would prove nothing"
    import engine.client

    public = {"engine": engine.__all__, "engine.client": engine.client.__all__}
    for module, name in imports:
        assert module in public, f"{module}.{name}: import it from engine (or engine.client)"
        assert name in public[module], name


def test_one_version_from_the_package_metadata() -> None:
    from importlib.metadata import version

    assert engine.__version__ == version("bayeux-engine")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{engine.__version__}"' in pyproject


def test_session_scheduling_fields_are_readonly() -> None:
    # The core moves these together with its timer wheels; an application
    # writing one would leave a wheel pointing at the wrong slot.
    session = engine.Session("c1", None, "websocket")
    for name in ("hold", "hold_entry", "expires_at", "expiry_slot", "flush_pending", "lazy_due"):
        getattr(session, name)  # readable
        with pytest.raises(AttributeError):
            setattr(session, name, getattr(session, name))
