"""The client judge (`python -m engine check --client`) against three real,
unmodified clients, and against a deliberately broken one.

Each real client runs under its driver (tests/check/judge_client.mjs for
CometD JS and Faye, tests/check/judge_aiocometd.py for aiocometd-ng), which
restarts it for each situation; each (client, transport) pair gets its own
judge, all started at once (their waits are idle time). The verdicts each
pair gets must equal the recorded ones in client_verdicts.json (status and,
for observations, what the client did): a regression of the judge or a
client upgrade shows up here. Re-record after a deliberate change with
ENGINE_RECORD_VERDICTS=1 (then review the diff).

The broken client (below, raw HTTP) honours everything but `reconnect: none`
and `interval`; it must FAIL exactly the situations about those.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from check.judge_aiocometd import drive
from harness import ROOT

pytestmark = pytest.mark.timeout(300)

HERE = Path(__file__).resolve().parent
RECORDED = HERE / "client_verdicts.json"
PYTHON = sys.executable
HOLD = (
    1.0  # the judge's advised timeout here (seconds); the rest is the judge's defaults, shortened
)
JUDGE_ARGS = [
    "--once",
    "--hold", str(HOLD),
    "--window", "3",
    "--stall-cap", "8",
    "--handshake-wait", "30",
    "--timeout-total", "240",
]  # fmt: skip
RUN_BOUND = 280.0  # seconds a whole judge run may take here (a shared, noisy machine)
SITUATIONS = [
    "baseline", "interval", "multiple_clients", "advice_handshake", "session_unknown",
    "resubscribe", "connect_cut", "slow_connect", "stalled_connect", "advice_none",
    "server_disconnect",
]  # fmt: skip

JS_DRIVER = str(HERE / "judge_client.mjs")
PY_DRIVER = str(HERE / "judge_aiocometd.py")
# (label, driver command before the URL, needs node)
CLIENTS: dict[str, tuple[list[str], list[str], bool]] = {
    # CometD JS: maxNetworkDelay 3 s instead of 10, so that stalled_connect is short.
    "cometd long-polling": ([JS_DRIVER, "cometd"], ["--max-network-delay", "3000"], True),
    "cometd websocket": (
        [JS_DRIVER, "cometd"],
        ["--transport", "websocket", "--max-network-delay", "3000"],
        True,
    ),
    "faye long-polling": ([JS_DRIVER, "faye"], ["--transport", "long-polling"], True),
    "faye websocket": ([JS_DRIVER, "faye"], ["--transport", "websocket"], True),
    "aiocometd-ng long-polling": ([PY_DRIVER], ["--transport", "long-polling"], False),
    "aiocometd-ng websocket": ([PY_DRIVER], ["--transport", "websocket"], False),
}


# ---------------------------------------------------------------- running a judge


@dataclasses.dataclass
class JudgeRun:
    """One judge process (its report in a file) and, optionally, a driver."""

    label: str
    workdir: Path
    judge: subprocess.Popen[bytes]
    url: str = ""
    driver: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, label: str, workdir: Path, *args: str) -> JudgeRun:
        workdir.mkdir(parents=True, exist_ok=True)
        out = open(workdir / "judge.out", "wb")  # noqa: SIM115 (the process keeps it)
        command = [PYTHON, "-m", "engine.check.client_judge", *args]
        command += ["--json", str(workdir / "verdicts.json"), "--junit", str(workdir / "junit.xml")]
        judge = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        run = cls(label, workdir, judge)
        run.url = run._listening_url(bound=30.0)
        return run

    def _listening_url(self, bound: float) -> str:
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            first = self.output().split("\n", 1)[0]
            if first.startswith("judge listening on "):
                return first.removeprefix("judge listening on ").strip()
            if self.judge.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"{self.label}: the judge did not listen:\n{self.output()}")

    def drive(self, command: list[str]) -> None:
        log = open(self.workdir / "driver.log", "wb")  # noqa: SIM115
        self.driver = subprocess.Popen(
            [*command, self.url], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        path = self.workdir / "judge.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def finish(self, bound: float = RUN_BOUND) -> tuple[int, list[dict[str, Any]]]:
        """The judge's exit status and verdicts, once it is over (bounded)."""
        try:
            status = self.judge.wait(bound)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"{self.label}: judge still running after {bound:.0f} s") from None
        finally:
            self._stop_driver()
        verdicts = json.loads((self.workdir / "verdicts.json").read_text())
        return status, verdicts

    def _stop_driver(self) -> None:
        if self.driver is None:
            return
        try:
            self.driver.wait(15)  # it sees the judge gone and stops by itself
        except subprocess.TimeoutExpired:
            self.driver.kill()
            self.driver.wait(5)

    def stop(self) -> None:
        for proc in (self.judge, self.driver):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(5)


def summary(verdicts: list[dict[str, Any]]) -> dict[str, list[str]]:
    return {v["name"]: [v["status"], v["observed"]] for v in verdicts}


# ---------------------------------------------------------------- the real clients


@pytest.fixture(scope="module")
def client_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, JudgeRun | str]]:
    """Every (client, transport) pair started at once: label -> its run, or why
    it is not run."""
    try:
        node: str | None = request.getfixturevalue("node_bin")
    except pytest.skip.Exception as missing:
        node, why_not = None, str(missing)
    runs: dict[str, JudgeRun | str] = {}
    base = tmp_path_factory.mktemp("client_judge")
    for label, (driver, options, needs_node) in CLIENTS.items():
        if needs_node and node is None:
            runs[label] = why_not
            continue
        run = JudgeRun.start(label, base / label.replace(" ", "_"), *JUDGE_ARGS)
        run.drive([node if needs_node else PYTHON, *driver, *options])  # type: ignore[list-item]
        runs[label] = run
    yield runs
    for run in runs.values():
        if isinstance(run, JudgeRun):
            run.stop()


@pytest.mark.parametrize("label", list(CLIENTS))
def test_real_client_gets_its_recorded_verdicts(
    label: str, client_runs: dict[str, JudgeRun | str]
) -> None:
    run = client_runs[label]
    if isinstance(run, str):
        pytest.skip(run)
    status, verdicts = run.finish()
    got = summary(verdicts)
    assert list(got) == SITUATIONS
    if os.environ.get("ENGINE_RECORD_VERDICTS"):
        recorded = json.loads(RECORDED.read_text()) if RECORDED.exists() else {}
        recorded[label] = got
        RECORDED.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    expected = json.loads(RECORDED.read_text())[label]
    assert got == expected, f"{label}: verdicts changed\n{run.output()}"
    failures = any(status == "FAIL" for status, _ in got.values())
    assert status == (1 if failures else 0)


# ---------------------------------------------------------------- a broken client


async def broken_client(url: str) -> None:
    """A raw long-polling client that honours handshake advice, 402 and cut
    connections, and times its requests out, but ignores `reconnect: none`
    and `interval`: it connects again at once, whatever the advice."""
    timeout = aiohttp.ClientTimeout(total=HOLD + 2)
    async with aiohttp.ClientSession(timeout=timeout) as http:

        async def send(message: dict[str, Any]) -> dict[str, Any]:
            async with http.post(url, json=[message]) as response:
                replies = await response.json()
            return next(r for r in replies if r.get("channel") == message["channel"])

        while True:
            handshake = {"channel": "/meta/handshake", "version": "1.0",
                         "supportedConnectionTypes": ["long-polling"]}  # fmt: skip
            client_id = (await send(handshake))["clientId"]
            sub = {"channel": "/meta/subscribe", "clientId": client_id, "subscription": "/x"}
            await send(sub)
            while True:
                connect = {"channel": "/meta/connect", "clientId": client_id,
                           "connectionType": "long-polling"}  # fmt: skip
                try:
                    reply = await send(connect)
                except (aiohttp.ClientError, TimeoutError):
                    await asyncio.sleep(0.5)
                    continue
                if reply.get("advice", {}).get("reconnect") == "handshake":
                    break
                await asyncio.sleep(0.1)  # (not `interval`: that is the bug)


def test_a_broken_client_fails_exactly_the_situations_it_breaks(tmp_path: Path) -> None:
    run = JudgeRun.start("broken", tmp_path, *JUDGE_ARGS)
    try:
        asyncio.run(asyncio.wait_for(drive(run.url, lambda: broken_client(run.url)), RUN_BOUND))
        status, verdicts = run.finish()
    finally:
        run.stop()
    failed = {v["name"] for v in verdicts if v["status"] == "FAIL"}
    assert failed == {"interval", "multiple_clients", "advice_none", "server_disconnect"}, (
        run.output()
    )
    assert {v["status"] for v in verdicts} == {"PASS", "FAIL"}, run.output()
    assert status == 1
    junit = ET.parse(tmp_path / "junit.xml").getroot()
    assert junit.get("failures") == "4" and junit.get("tests") == str(len(SITUATIONS))


# ---------------------------------------------------------------- the command line


def test_no_client_skips_every_situation_with_the_reason(tmp_path: Path) -> None:
    run = JudgeRun.start("alone", tmp_path, "--once", "--handshake-wait", "1")
    status, verdicts = run.finish(bound=60)
    assert status == 0
    assert [v["status"] for v in verdicts] == ["SKIP"] * len(SITUATIONS)
    assert "no client handshook within 1 s" in verdicts[0]["reason"]
    assert all("no client" in v["reason"] for v in verdicts[1:])


def test_sigterm_stops_the_judge_and_reports_the_rest_skipped(tmp_path: Path) -> None:
    run = JudgeRun.start("stopped", tmp_path, "--situations", "baseline,advice_none")
    run.judge.send_signal(signal.SIGTERM)
    status, verdicts = run.finish(bound=30)
    assert status == 0
    assert summary(verdicts) == {"baseline": ["SKIP", ""], "advice_none": ["SKIP", ""]}
    assert "stopped" in verdicts[1]["reason"]


def test_list_and_unknown_situations() -> None:
    listed = subprocess.run(
        [PYTHON, "-m", "engine.check.client_judge", "--list"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert [line.split()[0] for line in listed.stdout.splitlines()] == SITUATIONS
    unknown = subprocess.run(
        [PYTHON, "-m", "engine.check.client_judge", "--situations", "baseline,nope"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert unknown.returncode != 0 and "unknown situation 'nope'" in unknown.stderr


def test_callback_polling_answers_with_a_jsonp_script(tmp_path: Path) -> None:
    run = JudgeRun.start("jsonp", tmp_path, "--situations", "baseline")
    handshake = {"channel": "/meta/handshake", "version": "1.0", "id": "1",
                 "supportedConnectionTypes": ["callback-polling"]}  # fmt: skip
    query = urllib.parse.urlencode({"jsonp": "cb_1", "message": json.dumps([handshake])})
    try:
        with urllib.request.urlopen(f"{run.url}?{query}", timeout=10) as response:
            body = response.read().decode()
            content_type = response.headers["Content-Type"]
    finally:
        run.judge.send_signal(signal.SIGTERM)
        run.finish(bound=30)
    assert content_type.startswith("text/javascript")
    assert body.startswith("cb_1(") and body.endswith(")")
    reply = json.loads(body[len("cb_1(") : -1])[0]
    assert reply["successful"] is True and reply["clientId"]


def test_timeout_total_bounds_the_round(tmp_path: Path) -> None:
    run = JudgeRun.start("total", tmp_path, "--once", "--timeout-total", "2")
    status, verdicts = run.finish(bound=60)
    assert status == 0
    assert {v["status"] for v in verdicts} == {"SKIP"}
    assert all("--timeout-total (2 s) reached" in v["reason"] for v in verdicts)
    assert sum(v["seconds"] for v in verdicts) < 10


def test_a_flooding_client_is_bounded_counted_and_noted_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past MAX_SESSIONS handshakes in one situation the judge refuses more
    (503, reconnect none); past MAX_ARRIVALS messages it keeps no more. Each
    is counted and noted once in the exchange."""
    from engine.check import judge_server
    from engine.check.judge_server import JudgeServer, Timing

    monkeypatch.setattr(judge_server, "MAX_SESSIONS", 5)
    monkeypatch.setattr(judge_server, "MAX_ARRIVALS", 20)

    async def flood() -> None:
        server = JudgeServer("/cometd", Timing())
        stage = server.open_stage("baseline")
        handshake = {"channel": "/meta/handshake", "version": "1.0", "id": "1",
                     "supportedConnectionTypes": ["long-polling"]}  # fmt: skip
        replies = [(await server._batch([dict(handshake)], "long-polling"))[0] for _ in range(30)]
        assert [r["successful"] for r in replies] == [True] * 5 + [False] * 25
        assert replies[-1]["error"] == "503::judge_too_many_sessions"
        assert replies[-1]["advice"] == {"reconnect": "none"}
        assert len(stage.client_ids) == 5 and stage.refused_sessions == 25
        assert len(stage.arrivals) == 20 and stage.dropped_arrivals == 10
        notes = stage.exchange.render()
        assert notes.count("over 5 handshakes") == 1 and notes.count("over 20 messages") == 1
        server.close_stage(stage)

    asyncio.run(flood())
