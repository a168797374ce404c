"""Channel names and the subscription trie (https://docs.cometd.org/current/reference/#_concepts_channels).

Every table test runs on both implementations: the compiled `engine.routing._channels`
and its pure-Python twin `tests/oracles/channels.py`. Hypothesis then checks that the two
agree with each other, and with a brute-force matcher, on random inputs.
"""

from __future__ import annotations

import gc
import random
import tracemalloc
from types import ModuleType
from typing import Any

import oracles.channels as reference
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engine.routing._channels as compiled

IMPLS = [
    pytest.param((compiled, compiled.ChannelTrie), id="compiled"),
    pytest.param((reference, reference.PyChannelTrie), id="python"),
]


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    module: ModuleType = request.param[0]
    return module


@pytest.fixture(params=IMPLS)
def trie(request: pytest.FixtureRequest) -> Any:
    return request.param[1]()


# --- names -------------------------------------------------------------------

CONCRETE = ["/foo", "/foo/bar", "/foo/", "/a.b", "/a b", "/{id}", "/Foo", "/a/b/c/d/e"]
CONCRETE += ["/x/{id}", "/!#$()+-.@_{~}", "/ a", "/a /b", "/{", "/a/b/"]
CONCRETE += ["/a" * 64, "/" + "x" * 1023, "/" + "x" * 1023 + "/"]  # at the bounds
PATTERNS = ["/foo/*", "/foo/**", "/*", "/**", "/foo/*/", "/**/", "/a/b/c/**", "/{/*"]
INVALID: list[object] = ["foo", "/", "", 5, None, b"/foo", ["/foo"], "/foo//bar"]
INVALID += ["/foo bar%", "/foo/*/bar", "/**/foo", "/foo*", "/a/**x", "/foo/{id}/*"]
INVALID += ["/ /x", "//", "/foo//", "/***", "/*/*", "/x/ ", "/a\tb", "/caf\u00e9", "/\u20ac"]
INVALID += ["/{id}/**", "/{}/*", "foo/", "\\foo", "/a:b", "/a,b", "/a?b", "/a%20b"]
# Past the bounds (a deep subscription would cost a trie node per segment).
INVALID += ["/a" * 65, "/a" * 64 + "/*", "/" + "x" * 1024, "/a" * 20000]


@pytest.mark.parametrize("name", CONCRETE)
def test_valid_concrete(impl: ModuleType, name: str) -> None:
    assert impl.validate_channel(name) == impl.CHANNEL_OK_CONCRETE


@pytest.mark.parametrize("name", PATTERNS)
def test_valid_pattern(impl: ModuleType, name: str) -> None:
    assert impl.validate_channel(name) == impl.CHANNEL_OK_PATTERN


@pytest.mark.parametrize("name", INVALID)
def test_invalid(impl: ModuleType, name: object) -> None:
    assert impl.validate_channel(name) == impl.CHANNEL_INVALID


def test_constants(impl: ModuleType) -> None:
    assert (impl.MAX_CHANNEL_LENGTH, impl.MAX_CHANNEL_SEGMENTS) == (1024, 64)
    assert impl.CHANNEL_INVALID == 0  # the only falsy result
    codes = {impl.CHANNEL_INVALID, impl.CHANNEL_OK_CONCRETE, impl.CHANNEL_OK_PATTERN}
    kinds = {impl.KIND_BROADCAST, impl.KIND_SERVICE, impl.KIND_META}
    assert len(codes) == 3 and len(kinds) == 3
    assert set(impl.__all__) <= set(dir(impl))


@pytest.mark.parametrize(
    ("name", "normalized"),
    [
        ("/foo/", "/foo"),
        ("/foo", "/foo"),
        ("/foo//", "/foo/"),
        ("/", "/"),
        ("", ""),
        ("//", "/"),
        ("/a/*/", "/a/*"),
        ("x/", "x"),
    ],
)
def test_normalize(impl: ModuleType, name: str, normalized: str) -> None:
    assert impl.normalize_channel(name) == normalized


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("/meta/connect", "META"),
        ("/meta/", "META"),
        ("/meta/*", "META"),
        ("/meta", "BROADCAST"),
        ("/metadata", "BROADCAST"),
        ("/service/echo", "SERVICE"),
        ("/service/**", "SERVICE"),
        ("/services", "BROADCAST"),
        ("/foo", "BROADCAST"),
        ("/Meta/x", "BROADCAST"),
    ],
)
def test_channel_kind(impl: ModuleType, name: str, kind: str) -> None:
    assert impl.channel_kind(name) == getattr(impl, "KIND_" + kind)


@pytest.mark.parametrize("function", ["normalize_channel", "channel_kind"])
def test_non_str_is_a_type_error(impl: ModuleType, function: str) -> None:
    with pytest.raises(TypeError):
        getattr(impl, function)(5)


# --- trie: matching -----------------------------------------------------------

MATCH_TABLE = [
    ("/foo/*", ["/foo/bar", "/foo/boo"], ["/foo", "/foobar", "/foo/bar/baz"]),
    ("/foo/**", ["/foo/bar", "/foo/bar/baz", "/foo/a/b/c/d"], ["/foo", "/foobar", "/foobar/x"]),
    ("/*", ["/foo", "/bar", "/meta"], ["/foo/bar", "/a/b/c"]),
    ("/**", ["/foo", "/foo/bar", "/a/b/c/d"], []),
    ("/foo", ["/foo", "/foo/"], ["/foo/bar", "/foobar", "/Foo", "/fo"]),
    ("/foo/bar/", ["/foo/bar"], ["/foo", "/foo/bar/baz"]),
]


@pytest.mark.parametrize(("pattern", "matching", "not_matching"), MATCH_TABLE)
def test_match_table(trie: Any, pattern: str, matching: list[str], not_matching: list[str]) -> None:
    assert trie.add(pattern, "s")
    for channel in matching:
        assert trie.match(channel) == ["s"], channel
        assert trie.count_matching(channel) == 1
    for channel in not_matching:
        assert trie.match(channel) == [], channel
        assert trie.count_matching(channel) == 0


def test_routing_lookup(trie: Any) -> None:
    # For /a/b/c exactly /a/b/c, /a/b/*, /a/b/**, /a/** and /** apply.
    hits = ["/a/b/c", "/a/b/*", "/a/b/**", "/a/**", "/**"]
    misses = ["/a/b", "/a/*", "/*", "/a/b/c/*", "/a/b/c/**", "/b/**", "/a/c/*", "/a/b/d"]
    for pattern in hits + misses:
        trie.add(pattern, pattern)
    assert sorted(trie.match("/a/b/c")) == sorted(hits)
    assert sorted(trie.match("/a")) == ["/*", "/**"]


def test_each_subscriber_once(trie: Any) -> None:
    session = object()
    assert trie.add("/foo/*", session)
    assert trie.add("/foo/bar", session)
    assert trie.add("/foo/**", session)
    assert trie.add("/**", session)
    assert trie.match("/foo/bar") == [session]
    assert trie.count_matching("/foo/bar") == 1
    other = object()
    trie.add("/foo/bar", other)
    assert sorted(map(id, trie.match("/foo/bar"))) == sorted([id(session), id(other)])


def test_match_returns_a_fresh_list(trie: Any) -> None:
    trie.add("/foo", 1)
    first = trie.match("/foo")
    first.append(2)
    first.clear()
    assert trie.match("/foo") == [1]


@pytest.mark.parametrize("channel", ["/foo/*", "/**", "foo", "/", "", "/foo//bar", "/a%"])
def test_match_on_non_concrete_matches_nothing(trie: Any, channel: str) -> None:
    for pattern in ["/**", "/*", "/foo/*", "/foo/**", "/foo"]:
        trie.add(pattern, pattern)
    assert trie.match(channel) == []
    assert trie.count_matching(channel) == 0


def test_case_sensitive(trie: Any) -> None:
    trie.add("/Foo/*", 1)
    assert trie.match("/foo/x") == []
    assert trie.match("/Foo/x") == [1]


# --- trie: bookkeeping --------------------------------------------------------


def test_add_remove_count(trie: Any) -> None:
    assert len(trie) == 0
    assert trie.add("/foo/*", "a")
    assert not trie.add("/foo/*", "a")
    assert trie.add("/foo/*/", "b")  # same pattern once normalized
    assert trie.add("/foo", "a")
    assert trie.count("/foo/*") == 2
    assert trie.count("/foo") == 1
    assert trie.count("/foo/**") == 0
    assert trie.count("/nope/x") == 0
    assert trie.count("not a channel") == 0
    assert len(trie) == 2
    assert sorted(trie.patterns()) == ["/foo", "/foo/*"]

    assert trie.remove("/foo/*", "a")
    assert not trie.remove("/foo/*", "a")
    assert not trie.remove("/foo/**", "b")
    assert not trie.remove("/nope", "b")
    assert not trie.remove("bad", "b")
    assert trie.count("/foo/*") == 1
    assert trie.remove("/foo/*/", "b")
    assert trie.patterns() == ["/foo"]
    assert len(trie) == 1
    trie.clear()
    assert len(trie) == 0 and trie.patterns() == [] and trie.match("/foo") == []


@pytest.mark.parametrize("pattern", ["foo", "/", "/foo//bar", "/foo/*/bar", "/foo/{id}/*", ""])
def test_add_invalid_raises(trie: Any, pattern: str) -> None:
    with pytest.raises(ValueError):
        trie.add(pattern, 1)
    assert len(trie) == 0


@pytest.mark.parametrize("method", ["add", "remove"])
def test_non_str_pattern_is_a_type_error(trie: Any, method: str) -> None:
    with pytest.raises(TypeError):
        getattr(trie, method)(5, 1)
    with pytest.raises(TypeError):
        trie.match(None)


def test_pruning_in_reference() -> None:
    trie = reference.PyChannelTrie()
    trie.add("/a/b/c/**", 1)
    trie.add("/a/b", 2)
    trie.remove("/a/b/c/**", 1)
    assert list(trie._root.children) == ["a"]
    assert list(trie._root.children["a"].children["b"].children) == []
    trie.remove("/a/b", 2)
    assert trie._root.children == {}


def test_add_remove_cycles_do_not_leak(trie: Any) -> None:
    # Distinct names each round: without pruning every round leaves 3 nodes.
    sessions = [object() for _ in range(3)]
    trie.add("/keep/*", sessions[0])

    def cycle(base: int) -> None:
        for i in range(base, base + 2000):
            for session in sessions:
                trie.add(f"/n{i}/x/y", session)
                trie.add(f"/n{i}/x/**", session)
            for session in sessions:
                trie.remove(f"/n{i}/x/y", session)
                trie.remove(f"/n{i}/x/**", session)

    cycle(0)  # warm up caches and free lists
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        cycle(10_000)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64_000, grown
    assert trie.patterns() == ["/keep/*"]
    assert len(trie) == 1


# --- hypothesis: the two implementations agree ---------------------------------

SEGMENTS = ["a", "b", "c"]
ALL_CHANNELS = [f"/{x}" for x in SEGMENTS]
ALL_CHANNELS += [f"/{x}/{y}" for x in SEGMENTS for y in SEGMENTS]
ALL_CHANNELS += [f"/{x}/{y}/{z}" for x in SEGMENTS for y in SEGMENTS for z in SEGMENTS]

channels = st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3).map(
    lambda parts: "/" + "/".join(parts)
)
patterns = st.one_of(
    channels,
    st.lists(st.sampled_from(SEGMENTS), max_size=2).flatmap(
        lambda parts: st.sampled_from(["*", "**"]).map(lambda wild: "/" + "/".join([*parts, wild]))
    ),
)
names = st.tuples(patterns, st.booleans()).map(lambda p: p[0] + "/" if p[1] else p[0])
operations = st.lists(
    st.tuples(st.sampled_from(["add", "remove"]), names, st.integers(0, 3)), max_size=40
)


def brute_force_matches(pattern: str, channel: str) -> bool:
    """CometD's wildcard rule read literally: * is one segment, ** one or more."""
    wanted = reference.normalize_channel(pattern)[1:].split("/")
    got = channel[1:].split("/")
    if wanted[-1] == "**":
        return len(got) >= len(wanted) and got[: len(wanted) - 1] == wanted[:-1]
    if wanted[-1] == "*":
        return len(got) == len(wanted) and got[:-1] == wanted[:-1]
    return got == wanted


@settings(max_examples=300, deadline=None)
@given(operations)
def test_tries_agree(ops: list[tuple[str, str, int]]) -> None:
    fast = compiled.ChannelTrie()
    slow = reference.PyChannelTrie()
    model: dict[str, set[int]] = {}
    for op, name, subscriber in ops:
        assert getattr(fast, op)(name, subscriber) == getattr(slow, op)(name, subscriber)
        key = reference.normalize_channel(name)
        if op == "add":
            model.setdefault(key, set()).add(subscriber)
        else:
            model.get(key, set()).discard(subscriber)
            if not model.get(key, True):
                del model[key]
        assert fast.count(name) == slow.count(name) == len(model.get(key, ()))
        assert len(fast) == len(slow) == len(model)

    assert sorted(fast.patterns()) == sorted(slow.patterns()) == sorted(model)
    for channel in ALL_CHANNELS:
        expected = {s for p, subs in model.items() if brute_force_matches(p, channel) for s in subs}
        got_fast = fast.match(channel)
        got_slow = slow.match(channel)
        assert len(got_fast) == len(set(got_fast))  # each subscriber once
        assert set(got_fast) == set(got_slow) == expected, channel
        assert fast.count_matching(channel) == slow.count_matching(channel) == len(expected)


WIDE = [f"s{i}" for i in range(64)]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "remove"]),
            st.lists(st.sampled_from(WIDE), min_size=1, max_size=2).map(
                lambda parts: "/" + "/".join(parts)
            ),
            st.integers(0, 2),
        ),
        max_size=300,
    )
)
def test_many_siblings_agree(ops: list[tuple[str, str, int]]) -> None:
    # Dozens of children under one node: the compiled trie's child table
    # grows, and pruning shifts entries back within probe runs.
    fast = compiled.ChannelTrie()
    slow = reference.PyChannelTrie()
    for op, name, subscriber in ops:
        assert getattr(fast, op)(name, subscriber) == getattr(slow, op)(name, subscriber)
    assert sorted(fast.patterns()) == sorted(slow.patterns())
    for name in {name for _, name, _ in ops}:
        assert sorted(fast.match(name)) == sorted(slow.match(name)), name
        assert fast.count(name) == slow.count(name)


def test_siblings_stay_findable_while_pruned(trie: Any) -> None:
    names = [f"/wide/c{i}" for i in range(1500)]
    for i, name in enumerate(names):
        trie.add(name, i)
    order = list(range(len(names)))
    random.Random(5).shuffle(order)
    for step, i in enumerate(order):
        assert trie.remove(names[i], i)
        if step % 97 == 0:  # every remaining sibling is still found
            left = set(order[step + 1 :])
            assert all(trie.count(names[j]) == (1 if j in left else 0) for j in range(len(names)))
    assert trie.patterns() == []


texts = st.one_of(
    st.text(max_size=20),  # anything at all
    st.text(alphabet="/ab *{}%.\t\u00e9\u20ac", max_size=12),  # mostly near-misses
    st.from_regex(r"\A/[a-c*{} ]{0,3}(/[a-c*{} /]{0,3}){0,3}\Z"),  # mostly well-formed
)


@settings(max_examples=500, deadline=None)
@given(texts)
def test_validation_agrees(name: str) -> None:
    code = reference.validate_channel(name)
    assert compiled.validate_channel(name) == code
    assert compiled.normalize_channel(name) == reference.normalize_channel(name)
    assert compiled.channel_kind(name) == reference.channel_kind(name)
    if code != reference.CHANNEL_INVALID:  # valid names are accepted by the tries
        for trie in (compiled.ChannelTrie(), reference.PyChannelTrie()):
            assert trie.add(name, 1)
            assert trie.count(name) == 1


@pytest.mark.parametrize(
    "impl", [compiled.ChannelTrie, reference.PyChannelTrie], ids=["compiled", "reference"]
)
def test_subscribers_of_exactly_a_pattern(impl) -> None:  # type: ignore[no-untyped-def]
    trie = impl()
    trie.add("/a/*", "x")
    trie.add("/a/*", "y")
    trie.add("/a/**", "z")
    trie.add("/a", "w")
    assert sorted(trie.subscribers("/a/*")) == ["x", "y"]
    assert trie.subscribers("/a/**") == ["z"]
    assert trie.subscribers("/a/") == ["w"]
    assert trie.subscribers("/b") == []
    assert trie.subscribers("/a//") == []
