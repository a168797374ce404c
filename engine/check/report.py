"""Verdicts of `engine check`, and their two outputs: text for a person, JUnit
XML for CI (one testcase per check, `<failure>` or `<skipped>` with the
reason, the wire exchange in `<system-out>`).

Both directions of the tool (server checks and the client judge) report
through this module.
"""

from __future__ import annotations

import dataclasses
import enum
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence

__all__ = ["Status", "Verdict", "Exchange", "text_report", "junit_xml", "exit_status"]


class Status(enum.Enum):
    PASS = "PASS"
    FAIL = "FAIL"
    SKIP = "SKIP"


@dataclasses.dataclass
class Exchange:
    """What went over the wire for one check, in order: `>` sent, `<` received,
    `#` a note (a timeout, a closed socket)."""

    lines: list[str] = dataclasses.field(default_factory=list)
    limit: int = 200  # lines kept; a flood from a broken peer is cut, and says so
    cut: int = 0

    def add(self, direction: str, text: str) -> None:
        if len(self.lines) >= self.limit:
            self.cut += 1
            return
        if len(text) > 2000:
            text = text[:2000] + f"... ({len(text) - 2000} more characters)"
        self.lines.append(f"{direction} {text}")

    def sent(self, text: str) -> None:
        self.add(">", text)

    def received(self, text: str) -> None:
        self.add("<", text)

    def note(self, text: str) -> None:
        self.add("#", text)

    def render(self) -> str:
        tail = [f"# ... {self.cut} more lines not kept"] if self.cut else []
        return "\n".join(self.lines + tail)


@dataclasses.dataclass
class Verdict:
    """One check's outcome. `name` is stable (it is how a check is selected
    with `--only` and how recorded verdicts are compared); `rule` says what
    the protocol asks, `reason` why it passed, failed or was skipped."""

    name: str
    status: Status
    rule: str = ""
    reason: str = ""
    group: str = ""
    seconds: float = 0.0
    exchange: Exchange | None = None

    @property
    def failed(self) -> bool:
        return self.status is Status.FAIL


def _counts(verdicts: Sequence[Verdict]) -> dict[Status, int]:
    counts = {status: 0 for status in Status}
    for verdict in verdicts:
        counts[verdict.status] += 1
    return counts


def text_report(verdicts: Sequence[Verdict], *, title: str, verbose: bool = False) -> str:
    """A line per check; the reason under a FAIL or SKIP, and the wire exchange
    under a FAIL (under every check with `verbose`)."""
    out = [title]
    for verdict in verdicts:
        out.append(f"{verdict.status.value:4}  {verdict.name}  ({verdict.seconds:.2f} s)")
        if verdict.status is not Status.PASS or verbose:
            if verdict.rule:
                out.append(f"      rule: {verdict.rule}")
            if verdict.reason:
                out.append(f"      {verdict.reason}")
        if verdict.exchange is not None and (verdict.failed or verbose):
            for line in verdict.exchange.render().splitlines():
                out.append(f"        {line}")
    counts = _counts(verdicts)
    out.append(
        f"{counts[Status.PASS]} passed, {counts[Status.FAIL]} failed, {counts[Status.SKIP]} skipped"
    )
    return "\n".join(out) + "\n"


def junit_xml(verdicts: Sequence[Verdict], *, suite: str, timestamp: float | None = None) -> bytes:
    """JUnit XML, the format CI systems read (Jenkins, GitLab, GitHub actions)."""
    counts = _counts(verdicts)
    root = ET.Element(
        "testsuite",
        name=suite,
        tests=str(len(verdicts)),
        failures=str(counts[Status.FAIL]),
        skipped=str(counts[Status.SKIP]),
        errors="0",
        time=f"{sum(v.seconds for v in verdicts):.3f}",
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp)),
    )
    for verdict in verdicts:
        case = ET.SubElement(
            root,
            "testcase",
            classname=f"{suite}.{verdict.group}" if verdict.group else suite,
            name=verdict.name,
            time=f"{verdict.seconds:.3f}",
        )
        if verdict.status is Status.FAIL:
            failure = ET.SubElement(case, "failure", message=verdict.reason or "failed")
            failure.text = verdict.rule
        elif verdict.status is Status.SKIP:
            ET.SubElement(case, "skipped", message=verdict.reason or "skipped")
        if verdict.exchange is not None and verdict.exchange.lines:
            ET.SubElement(case, "system-out").text = verdict.exchange.render()
    ET.indent(root)
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))


def exit_status(verdicts: Iterable[Verdict]) -> int:
    """0 when nothing failed, 1 otherwise (2 is left for usage errors)."""
    return 1 if any(v.failed for v in verdicts) else 0
