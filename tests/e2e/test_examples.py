"""The README's examples run as written (examples/quickstart.py)."""

from __future__ import annotations

import importlib
import sys
import time

from harness import ROOT, running_server
from support import Browser

from engine import BayeuxServer


def fresh_quickstart() -> BayeuxServer:
    sys.modules.pop("examples.quickstart", None)
    module = importlib.import_module("examples.quickstart")
    return module.server  # type: ignore[no-any-return]


def test_quickstart_example() -> None:
    with running_server(app=fresh_quickstart(), max_interval=500) as server:
        b = Browser(server).ready()
        resp = b.publish("/service/echo", "hi")
        assert [m["data"] for m in resp.messages if "data" in m] == [{"echo": "hi"}]
        b.start_connect(advice={"timeout": 2000})
        time.sleep(0.05)
        b.publish("/service/quote", "AAPL")
        held = b.finish_connect()
        assert [m["data"] for m in held.messages if "data" in m] == [
            {"symbol": "AAPL", "price": 189.5}
        ]
        b.subscribe("/chat/*")
        shouted = b.publish("/chat/room", {"text": "HELLO ALL"}).reply("/chat/room")
        assert shouted["error"] == "404::message_deleted"
        calm = b.publish("/chat/room", {"text": "hello all"})
        (event,) = calm.events()
        assert event["ext"] == {"seq": 1}
        # A session that expires is announced on /chat/system (b holds a
        # connect meanwhile, so it does not expire itself).
        Browser(server).ready()
        b.start_connect(advice={"timeout": 3000})
        events = b.finish_connect().events()
        assert [e["channel"] for e in events] == ["/chat/system"]
        assert events[0]["data"]["expired"] is True


def test_readme_shows_the_quickstart_as_it_is() -> None:
    root = ROOT
    readme = (root / "README.md").read_text()
    code = (root / "examples" / "quickstart.py").read_text()
    assert f"```python\n{code}```" in readme
