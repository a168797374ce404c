"""The compiled batcher and its pure-Python twin agree (hypothesis)."""

from __future__ import annotations

import oracles.batch as reference
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

import engine.delivery._batch as compiled
import engine.transport._wsframe as wsframe

IMPLEMENTATIONS = [compiled, reference]
parts_strategy = st.lists(st.binary(max_size=300), max_size=40)
big_parts = st.lists(st.binary(min_size=1000, max_size=3000), min_size=20, max_size=40)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS, ids=["compiled", "reference"])
def test_splice_array(impl) -> None:  # type: ignore[no-untyped-def]
    assert impl.splice_array([]) == b"[]"
    assert impl.splice_array([b'{"a":1}']) == b'[{"a":1}]'
    assert impl.splice_array([b"1", b"2", b"3"]) == b"[1,2,3]"
    with pytest.raises(TypeError):
        impl.splice_array(["not bytes"])


@pytest.mark.parametrize("impl", IMPLEMENTATIONS, ids=["compiled", "reference"])
def test_splice_http_and_jsonp(impl) -> None:  # type: ignore[no-untyped-def]
    head = b"HTTP/1.1 200 OK\r\n"
    assert impl.splice_http(head, [b"1"]) == head + b"Content-Length: 3\r\n\r\n[1]"
    assert impl.splice_jsonp(head, b"cb_1", [b"1"]) == (
        head + b"Content-Length: 9\r\n\r\ncb_1([1])"
    )


@given(parts_strategy)
def test_twins_agree(parts: list[bytes]) -> None:
    head = b"HTTP/1.1 200 OK\r\nX: y\r\n"
    assert compiled.splice_array(parts) == reference.splice_array(parts)
    assert compiled.splice_http(head, parts) == reference.splice_http(head, parts)
    assert compiled.splice_jsonp(head, b"c", parts) == reference.splice_jsonp(head, b"c", parts)
    assert compiled.splice_ws(parts) == reference.splice_ws(parts)


@given(st.one_of(parts_strategy, big_parts))
def test_splice_ws_is_one_text_frame(parts: list[bytes]) -> None:
    payload = compiled.splice_array(parts)
    assert compiled.splice_ws(parts) == wsframe.encode_frame(wsframe.OP_TEXT, payload)


def test_encode() -> None:
    message = {"channel": "/a", "data": [1, "x"]}
    assert compiled.encode_message(message) == orjson.dumps(message)
    assert compiled.encode_all([message, message]) == [orjson.dumps(message)] * 2


def test_compiled_refuses_none() -> None:
    # The compiled functions are cpdef (cimported by the other compiled
    # modules), where Cython has no `not None`: None must still be refused.
    calls = [
        lambda: compiled.splice_array(None),  # type: ignore[arg-type]
        lambda: compiled.splice_http(None, [b"1"]),  # type: ignore[arg-type]
        lambda: compiled.splice_http(b"h", None),  # type: ignore[arg-type]
        lambda: compiled.splice_jsonp(b"h", None, [b"1"]),  # type: ignore[arg-type]
        lambda: compiled.encode_all(None),  # type: ignore[arg-type]
        lambda: compiled.splice_ws(None),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(TypeError):
            call()
