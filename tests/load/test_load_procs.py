"""engine/load/procs.py and the generator sizing of engine/load/idle.py: the
child-process handle (LineChild), the server process (ServerProcess) and how
many load generators a run needs."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.load import idle
from engine.load import procs as common


@pytest.mark.timeout(30)
def test_line_child_and_bad_template() -> None:
    """procs.LineChild, the handle of every helper process: its JSON lines,
    words on its stdin, its stderr kept, stop; and a malformed server command
    template is a clean ServerStartError, not a traceback."""
    script = (
        "import json, sys\n"
        "print(json.dumps({'type': 'hello'}), flush=True)\n"
        "print('not json', flush=True)\n"
        "while line := sys.stdin.readline():\n"
        "    print(json.dumps({'type': 'got', 'word': line.strip()}), flush=True)\n"
        "    print('note', file=sys.stderr, flush=True)\n"
    )

    class Echo(common.LineChild):
        def __init__(self) -> None:
            super().__init__([sys.executable, "-c", script], "echo", echo=False)
            self.got: list[dict[str, Any]] = []

        def on_line(self, d: dict[str, Any]) -> None:
            self.got.append(d)

    async def main() -> None:
        guard = common.ChildGuard()
        child = Echo()
        try:
            await child.start(guard)
            child.send("ping")
            for _ in range(500):  # bounded: 5 s
                if len(child.got) >= 2:
                    break
                await asyncio.sleep(0.01)
            await child.stop(5.0)  # "stop", then end of file: it answers and exits
        finally:
            guard.kill_all()
        assert [(d["type"], d.get("word")) for d in child.got] == [
            ("hello", None),
            ("got", "ping"),
            ("got", "stop"),
        ]
        assert child.stderr_tail == ["note", "note"] and not child.alive()

    asyncio.run(main())

    with pytest.raises(common.ServerStartError, match="bad server command template"):
        common.ServerProcess(
            "{python} -m engine serve --port {port} --oops {nope}",
            host="127.0.0.1",
            port=1,
            path="/cometd",
            timeout_ms=1000,
            guard=common.ChildGuard(),
        )


@pytest.mark.timeout(30)
def test_other_server_command_runs_its_own_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A --server-cmd that does not start with {python} is another checkout's
    server: the bench's own repository (its working directory) must not
    shadow that checkout's `engine` package (an A/B would compare one
    version with itself)."""
    other = tmp_path / "other" / "engine"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("")
    (other / "__main__.py").write_text(
        "import sys, time\n"
        "print('other engine', __file__, flush=True)\n"
        "print('http://127.0.0.1:' + sys.argv[1] + '/cometd', flush=True)\n"
        "time.sleep(30)\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "other"))

    async def main() -> list[str]:
        guard = common.ChildGuard()
        server = common.ServerProcess(
            f"{sys.executable} -m engine {{port}}",
            host="127.0.0.1",
            port=1234,
            path="/cometd",
            timeout_ms=1000,
            guard=guard,
        )
        try:
            await server.start(10.0)
            return list(server.lines)
        finally:
            await server.stop(1.0)
            guard.kill_all()

    lines = asyncio.run(main())
    assert any(line.startswith("other engine " + str(other)) for line in lines), lines


def test_generator_processes_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """--procs: one generator per CPU the server leaves over, more only when
    the open-files limit needs them; an explicit --procs wins."""
    import argparse
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda _: (20000, 20000))

    def procs(clients: int, cpus: int, workers: int | None = None, given: int | None = None) -> int:
        monkeypatch.setattr(idle.os, "cpu_count", lambda: cpus)
        args = argparse.Namespace(
            clients=clients,
            procs=given,
            workers=workers,
            source_addrs=None,
            ramp_timeout=None,
            ramp_rate=1000.0,
        )
        idle.resolve_generators("idle.py", args)
        return int(args.procs)

    assert procs(19000, cpus=2) == 1  # the server takes one CPU, the generator the other
    assert procs(19000, cpus=8) == 7
    assert procs(19000, cpus=1) == 1
    assert procs(60000, cpus=2) == 4  # 19,900 sockets per generator at most
    assert procs(250000, cpus=2, workers=14) == 13
    assert procs(19000, cpus=2, given=3) == 3
    assert procs(5, cpus=8) == 5  # never more generators than clients
    with pytest.raises(SystemExit, match="open-files limit"):
        procs(40000, cpus=2, given=1)
