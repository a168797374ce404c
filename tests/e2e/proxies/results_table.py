"""docs/proxies.md's table from the results file of tests/e2e/proxies/:

    python tests/e2e/proxies/results_table.py [build/proxy-results.json]

prints the Markdown table: each proxy and version, the transports that
worked end to end, the settings its template needs, and its caveats (the
expected failures and their reasons, any test that failed, and what was
found setting it up).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

TRANSPORTS = ("long-polling", "websocket", "callback-polling")
NOT_MEASURED = "not yet measured"


def transports_that_work(tests: dict[str, dict[str, Any]]) -> list[str]:
    """A transport works when the CometD client and the held connect passed."""
    return [
        t
        for t in TRANSPORTS
        if all(
            tests.get(f"{name}[transport={t}]", {}).get("outcome") == "passed"
            for name in ("test_cometd_client", "test_held_connect_comes_back")
        )
    ]


def short_version(line: str) -> str:
    """The version number in what the proxy printed (e.g. `nginx version:
    nginx/1.22.1`), else that line."""
    match = re.search(r"\d+\.\d+(\.\d+)?", line)
    return match.group(0) if match else line.replace("|", "/")


def caveats(entry: dict[str, Any]) -> list[str]:
    """What was found setting the proxy up, then what its tests found."""
    tests: dict[str, dict[str, Any]] = entry["tests"]
    found = [entry["caveats"]] if entry.get("caveats") else []
    for test, result in tests.items():
        if result["outcome"] == "xfailed":
            found.append(f"{test}: {result['reason']}")
        elif result["outcome"] not in ("passed", "xfailed"):
            found.append(f"{test}: {result['outcome'].upper()}")
    return found


def table(results: dict[str, dict[str, Any]]) -> str:
    head = (
        "| proxy | version | transports that work | settings required | caveats "
        "| idle capacity | memory per connection | added p99 |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    rows = []
    for entry in results.values():
        tests = entry["tests"]
        rows.append(
            "| "
            + " | ".join(
                [
                    f"{entry['title']} (`{entry['package']}`)",
                    short_version(entry["version"]),
                    ", ".join(transports_that_work(tests)) or "none",
                    entry["settings"],
                    "; ".join(caveats(entry)).replace("|", "/") or "none found",
                    NOT_MEASURED,
                    NOT_MEASURED,
                    NOT_MEASURED,
                ]
            )
            + " |"
        )
    return head + "\n".join(rows) + "\n"


def main(argv: list[str]) -> int:
    path = Path(argv[0] if argv else Path(__file__).parents[3] / "build" / "proxy-results.json")
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"cannot read the results file {path}: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
