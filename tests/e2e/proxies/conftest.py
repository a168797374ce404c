"""The proxies' tests: what a proxy cannot do is an expected failure (from
proxy_support.LIMITS), and every outcome goes to a results file, JSON, from
which docs/proxies.md's table is made (results_table.py):

    {"<proxy>": {"title", "version", "package", "tests": {"<test id>":
        {"outcome": "passed" | "failed" | "xfailed" | "skipped", "reason"}}}}

The file is $PROXY_RESULTS, or build/proxy-results.json; a run updates the
tests it ran and keeps the others.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e.proxies.proxy_support import KINDS, LIMITS, ROOT, VERSIONS

# The cluster fixture runs the JavaScript clients from threads while the
# tests start processes too: CPython 3.11's vfork() path (the GIL released
# around it) then sometimes fails an exec with EFAULT ("Bad address"). fork()
# is the documented way around it (the subprocess docs, "Disabling use of
# vfork() or posix_spawn()").
if hasattr(subprocess, "_USE_VFORK"):
    subprocess._USE_VFORK = False

RESULTS = pytest.StashKey[dict[str, dict[str, Any]]]()


def _proxy_and_test(item: pytest.Item) -> tuple[str, str] | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None or "cluster" not in callspec.params:
        return None
    proxy = str(callspec.params["cluster"])
    params = [f"{k}={v}" for k, v in callspec.params.items() if k != "cluster"]
    name = getattr(item, "originalname", item.name)
    return proxy, name + (f"[{','.join(params)}]" if params else "")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        key = _proxy_and_test(item)
        if key is not None and key in LIMITS:
            item.add_marker(pytest.mark.xfail(reason=LIMITS[key], strict=True))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report: pytest.TestReport = yield
    key = _proxy_and_test(item)
    if key is None or (report.when != "call" and report.passed):
        return report
    proxy, test = key
    results = item.config.stash.setdefault(RESULTS, {})
    if hasattr(report, "wasxfail"):
        outcome, reason = ("xfailed" if report.skipped else "xpassed"), report.wasxfail
    else:
        outcome = report.outcome
        reason = "" if report.passed else str(report.longrepr)[-1500:]
    results.setdefault(proxy, {})[test] = {"outcome": outcome, "reason": reason}
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    results = session.config.stash.get(RESULTS, {})
    if not results:
        return
    path = Path(os.environ.get("PROXY_RESULTS") or ROOT / "build" / "proxy-results.json")
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        saved = {}
    versions = session.config.stash.get(VERSIONS, {})
    for proxy, tests in results.items():
        kind = KINDS[proxy]
        tests = {**saved.get(proxy, {}).get("tests", {}), **tests}
        saved[proxy] = {
            "title": kind.title,
            "package": kind.package,
            "version": versions.get(proxy, "?"),
            "settings": kind.settings,
            "caveats": kind.caveats,
            "tests": dict(sorted(tests.items())),
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(sorted(saved.items())), indent=1) + "\n")
