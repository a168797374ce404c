"""Channel names and the subscription trie, compiled.

Same API and behaviour as its plain-Python twin, the test oracle
``tests/oracles/channels.py`` (the tests check that they agree).

Names follow CometD's rules for channel names
(https://docs.cometd.org/current/reference/#_concepts_channels), as applied here:

* a ``str`` starting with ``/``, at least two characters long, every other
  character in CometD's set (``A-Z a-z 0-9``, space, ``! # $ ( ) * + - . / @ _
  { ~ }``);
* one trailing ``/`` is dropped before anything else (``/foo/`` is ``/foo``);
* no empty segment, no segment made only of spaces;
* ``*`` and ``**`` only as the entire last segment (that makes a pattern);
* a pattern may not also contain a ``{...}`` template segment.

Differences are only in how the work is done:

* ``validate_channel`` runs on every publish, so it is one pass over the
  string's 1-byte buffer with a 256-entry lookup table, no Python objects.
* ``ChannelTrie.match`` is one walk down the trie: O(depth of the channel),
  independent of the number of subscriptions. The only Python objects made
  per call are one substring per segment (the dict key), the result list and,
  when several subscription groups match, one union set.
"""

cimport cython
from cpython.list cimport PyList_GET_ITEM
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.string cimport memcmp
from cpython.unicode cimport (
    PyUnicode_1BYTE_KIND,
    PyUnicode_DATA,
    PyUnicode_KIND,
    PyUnicode_Substring,
)

__all__ = [
    "CHANNEL_INVALID",
    "CHANNEL_OK_CONCRETE",
    "CHANNEL_OK_PATTERN",
    "KIND_BROADCAST",
    "KIND_META",
    "KIND_SERVICE",
    "ChannelTrie",
    "channel_kind",
    "normalize_channel",
    "validate_channel",
    "MAX_CHANNEL_LENGTH",
    "MAX_CHANNEL_SEGMENTS",
]

# C-level values of the public constants; the Python names below mirror them.
cdef enum:
    C_CHANNEL_INVALID = 0
    C_CHANNEL_OK_CONCRETE = 1
    C_CHANNEL_OK_PATTERN = 2
    C_KIND_BROADCAST = 0
    C_KIND_SERVICE = 1
    C_KIND_META = 2

CHANNEL_INVALID = C_CHANNEL_INVALID
CHANNEL_OK_CONCRETE = C_CHANNEL_OK_CONCRETE
CHANNEL_OK_PATTERN = C_CHANNEL_OK_PATTERN
KIND_BROADCAST = C_KIND_BROADCAST
KIND_SERVICE = C_KIND_SERVICE
KIND_META = C_KIND_META

# Which set of a node a pattern's last segment selects.
cdef enum:
    _EXACT = 0
    _STAR = 1
    _DOUBLE_STAR = 2

# _ALLOWED[c] is 1 for CometD's channel characters. Indexed by a Py_UCS1, so
# it has 256 entries and no bounds test is needed (static: zero-filled).
# Bounds on a name: each segment of a subscription is a node of the trie, so
# an unbounded depth would let one subscription cost megabytes.
MAX_CHANNEL_LENGTH = 1024
MAX_CHANNEL_SEGMENTS = 64
cdef Py_ssize_t _MAX_LENGTH = MAX_CHANNEL_LENGTH
cdef Py_ssize_t _MAX_SEGMENTS = MAX_CHANNEL_SEGMENTS

cdef unsigned char _ALLOWED[256]
cdef bytes _ALLOWED_CHARS = (
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 !#$()*+-./@_{~}"
)
cdef unsigned char _allowed_char
for _allowed_char in _ALLOWED_CHARS:
    _ALLOWED[_allowed_char] = 1


cdef inline str _require_str(object name):
    # Accepts str subclasses, like the twin's isinstance() test.
    if not isinstance(name, str):
        raise TypeError(f"channel name must be str, not {type(name).__name__}")
    return <str>name


cdef inline Py_ssize_t _normalized_length(str name) noexcept:
    """Length of ``name`` once one trailing '/' is dropped ('/' keeps its slash)."""
    cdef Py_ssize_t n = len(name)
    if n > 1 and name[n - 1] == u"/":  # a PyUnicode_READ_CHAR, no object
        return n - 1
    return n


cdef int _classify(str name, Py_ssize_t n) noexcept:
    """Validate the first ``n`` characters of ``name`` (its normalized length).

    Every allowed character is ASCII, so a string whose storage is not 1 byte
    per character (CPython picks the narrowest that fits; a non-ready legacy
    string also reports another kind) cannot be valid: no per-character work.
    """
    if n < 2 or n > _MAX_LENGTH or PyUnicode_KIND(name) != PyUnicode_1BYTE_KIND:
        return C_CHANNEL_INVALID
    cdef const unsigned char *data = <const unsigned char *>PyUnicode_DATA(name)
    if data[0] != b"/":
        return C_CHANNEL_INVALID

    cdef Py_ssize_t i
    cdef Py_ssize_t seg_start = 1
    cdef Py_ssize_t stars = 0
    cdef Py_ssize_t segments = 0
    cdef bint only_spaces = True
    cdef bint wildcard = False
    cdef bint template = False
    cdef unsigned char c
    # i == n acts as a closing '/', so the last segment is checked in the loop.
    for i in range(1, n + 1):
        c = data[i] if i < n else b"/"
        if c == b"/":
            segments += 1
            if only_spaces or segments > _MAX_SEGMENTS:  # empty segment, or only spaces
                return C_CHANNEL_INVALID
            if stars:
                # '*' or '**' as the whole segment, and only the last one.
                if stars != i - seg_start or stars > 2 or i != n:
                    return C_CHANNEL_INVALID
                wildcard = True
            elif data[seg_start] == b"{" and data[i - 1] == b"}":
                template = True
            seg_start = i + 1
            stars = 0
            only_spaces = True
        elif not _ALLOWED[c]:
            return C_CHANNEL_INVALID
        else:
            if c != b" ":
                only_spaces = False
            if c == b"*":
                stars += 1
    if wildcard:
        return C_CHANNEL_INVALID if template else C_CHANNEL_OK_PATTERN
    return C_CHANNEL_OK_CONCRETE


cpdef int validate_channel(object name) noexcept:
    """Classify ``name``: CHANNEL_OK_CONCRETE, CHANNEL_OK_PATTERN or CHANNEL_INVALID.

    The checks apply to the normalized name (one trailing '/' dropped).
    """
    if not isinstance(name, str):
        return C_CHANNEL_INVALID
    return _classify(<str>name, _normalized_length(<str>name))


cpdef str normalize_channel(object name):
    """Drop one trailing ``/`` (``/foo/`` -> ``/foo``); ``/`` itself is kept."""
    cdef str s = _require_str(name)
    cdef Py_ssize_t n = _normalized_length(s)
    if n == len(s):
        return s
    return PyUnicode_Substring(s, 0, n)


cpdef int channel_kind(object name) except -1:
    """KIND_META, KIND_SERVICE or KIND_BROADCAST, by a plain prefix test."""
    cdef str s = _require_str(name)
    if s.startswith(u"/meta/"):
        return C_KIND_META
    if s.startswith(u"/service/"):
        return C_KIND_SERVICE
    return C_KIND_BROADCAST


cdef extern from "Python.h":
    # The keyed hash str uses (SipHash), over bytes: a segment is looked up
    # without making a str of it, and crafted names cannot flood a table.
    Py_hash_t _Py_HashBytes(const void *src, Py_ssize_t length)


@cython.final
cdef class _Node:
    """One prefix path (``/a/b``) of the trie."""

    # Subscribers of this prefix itself, of prefix/* and of prefix/**; None
    # until first used and reset to None when emptied, so that an empty node
    # is recognisable (and prunable) and leaves cost no set.
    cdef set exact
    cdef set star
    cdef set double_star
    # Its own segment under its parent, and that segment's hash.
    cdef str segment
    cdef Py_hash_t hash
    # Children: a list that owns them, None while there are none, and an
    # open-addressed table (linear probing, at most half full) of indexes
    # into it, found by the segment's hash and checked against its bytes.
    cdef list kids
    cdef Py_ssize_t *slots
    cdef Py_ssize_t mask  # table size - 1

    def __dealloc__(self):
        PyMem_Free(self.slots)

    cdef _Node find(self, const unsigned char *segment, Py_ssize_t length, Py_hash_t h):
        """The child under ``segment``, or None."""
        if self.kids is None:
            return None
        cdef Py_ssize_t i = <Py_ssize_t>(<size_t>h & <size_t>self.mask), index
        cdef _Node child
        while True:
            index = self.slots[i]
            if index < 0:
                return None
            child = <_Node>PyList_GET_ITEM(self.kids, index)
            if (
                child.hash == h
                and len(child.segment) == length
                and memcmp(PyUnicode_DATA(child.segment), segment, length) == 0
            ):
                return child
            i = (i + 1) & self.mask

    cdef int _place(self, Py_ssize_t index, Py_hash_t h) except -1:
        cdef Py_ssize_t i = <Py_ssize_t>(<size_t>h & <size_t>self.mask)
        while self.slots[i] >= 0:
            i = (i + 1) & self.mask
        self.slots[i] = index
        return 0

    cdef int _resize(self, Py_ssize_t size) except -1:
        """A new table of ``size`` (a power of two) slots for every child."""
        cdef Py_ssize_t *slots = <Py_ssize_t *>PyMem_Malloc(size * sizeof(Py_ssize_t))
        if slots == NULL:
            raise MemoryError()
        cdef Py_ssize_t i
        for i in range(size):
            slots[i] = -1
        PyMem_Free(self.slots)
        self.slots = slots
        self.mask = size - 1
        for i in range(len(self.kids)):
            self._place(i, (<_Node>PyList_GET_ITEM(self.kids, i)).hash)
        return 0

    cdef _Node add_child(self, str segment, Py_hash_t h):
        cdef _Node child = _Node()
        child.segment = segment
        child.hash = h
        if self.kids is None:
            self.kids = [child]
            self._resize(4)
            return child
        self.kids.append(child)
        if 2 * len(self.kids) > self.mask + 1:
            self._resize(2 * (self.mask + 1))
        else:
            self._place(len(self.kids) - 1, h)
        return child

    cdef Py_ssize_t _slot_of(self, Py_ssize_t index, Py_hash_t h) noexcept:
        cdef Py_ssize_t i = <Py_ssize_t>(<size_t>h & <size_t>self.mask)
        while self.slots[i] != index:
            i = (i + 1) & self.mask
        return i

    cdef int remove_child(self, _Node child) except -1:
        """Drop a child (pruning): its slot goes (the entries after it in its
        run shift back), and the last child takes its place in the list."""
        cdef Py_ssize_t i = <Py_ssize_t>(<size_t>child.hash & <size_t>self.mask)
        while <_Node>PyList_GET_ITEM(self.kids, self.slots[i]) is not child:
            i = (i + 1) & self.mask
        cdef Py_ssize_t index = self.slots[i], last = len(self.kids) - 1, j = i, home
        while True:
            j = (j + 1) & self.mask
            if self.slots[j] < 0:
                break
            home = <Py_ssize_t>(
                <size_t>(<_Node>PyList_GET_ITEM(self.kids, self.slots[j])).hash
                & <size_t>self.mask
            )
            # The entry at j may fill the hole at i unless its home slot lies
            # cyclically in (i, j].
            if (i <= j and (home <= i or home > j)) or (i > j and home <= i and home > j):
                self.slots[i] = self.slots[j]
                i = j
        self.slots[i] = -1
        if last == 0:
            self.kids = None
            PyMem_Free(self.slots)
            self.slots = NULL
            self.mask = 0
            return 0
        cdef _Node moved
        if index != last:
            moved = <_Node>PyList_GET_ITEM(self.kids, last)
            self.slots[self._slot_of(last, moved.hash)] = index
            self.kids[index] = moved
        del self.kids[last]
        return 0

    cdef inline set get(self, int which):
        if which == _EXACT:
            return self.exact
        if which == _STAR:
            return self.star
        return self.double_star

    cdef inline void put(self, int which, set value):
        if which == _EXACT:
            self.exact = value
        elif which == _STAR:
            self.star = value
        else:
            self.double_star = value

    cdef inline bint is_empty(self):
        return (
            self.exact is None
            and self.star is None
            and self.double_star is None
            and self.kids is None
        )


cdef inline _Node _child(_Node node, const unsigned char *data, Py_ssize_t start,
                         Py_ssize_t end):
    """The child of ``node`` under segment ``data[start:end]``, or None."""
    if node.kids is None:
        return None
    return node.find(data + start, end - start, _Py_HashBytes(data + start, end - start))


cdef inline Py_ssize_t _segment_end(const unsigned char *data, Py_ssize_t start,
                                    Py_ssize_t n) noexcept:
    while start < n and data[start] != b"/":
        start += 1
    return start


cdef inline Py_ssize_t _prefix_end(const unsigned char *data, Py_ssize_t n, int code,
                                   int *which) noexcept:
    """Split a valid pattern into its node path ``[1, end)`` and which set of it.

    ``/a/b`` -> path "a/b", exact; ``/a/*`` -> path "a", star; ``/**`` -> root,
    double star. An end <= 1 means the root.
    """
    if code == C_CHANNEL_OK_PATTERN:
        if data[n - 2] == b"*":
            which[0] = _DOUBLE_STAR
            return n - 3
        which[0] = _STAR
        return n - 2
    which[0] = _EXACT
    return n


cdef inline set _merge(set merged, set first, set group):
    """Add ``group`` to the union of the groups so far (``first`` is never mutated)."""
    if merged is None:
        return first | group
    merged |= group
    return merged


@cython.final
cdef class ChannelTrie:
    """Subscriptions (channel or pattern -> subscribers), matched in one walk.

    Subscribers are arbitrary hashable objects (sessions, in the server).
    Matching ``/a/b/c`` visits root, ``/a``, ``/a/b``, ``/a/b/c`` once and
    collects the ``**`` subscribers of every ancestor, the ``*`` subscribers
    of the parent and the exact subscribers of the last node: the subscribers
    of ``/**``, ``/a/**``, ``/a/b/**``, ``/a/b/*`` and ``/a/b/c``. Every method takes names as validate_channel does ('/foo/' is
    '/foo').
    """

    cdef _Node _root
    cdef Py_ssize_t _patterns  # patterns with at least one subscriber

    def __cinit__(self):
        self._root = _Node()
        self._patterns = 0

    cpdef bint add(self, object pattern, object subscriber) except -1:
        """Subscribe; True if ``subscriber`` was not yet on ``pattern``.

        Raises TypeError for a non-str and ValueError for an invalid name.
        """
        cdef str name = _require_str(pattern)
        cdef Py_ssize_t n = _normalized_length(name)
        cdef int code = _classify(name, n)
        if code == C_CHANNEL_INVALID:
            raise ValueError(f"invalid channel: {name!r}")
        cdef const unsigned char *data = <const unsigned char *>PyUnicode_DATA(name)
        cdef int which
        cdef Py_ssize_t end = _prefix_end(data, n, code, &which)
        cdef Py_ssize_t start = 1
        cdef Py_ssize_t seg_end
        cdef _Node node = self._root
        cdef _Node child
        cdef Py_hash_t h
        while start < end:
            seg_end = _segment_end(data, start, end)
            h = _Py_HashBytes(data + start, seg_end - start)
            child = node.find(data + start, seg_end - start, h)
            if child is None:
                child = node.add_child(PyUnicode_Substring(name, start, seg_end), h)
            node = child
            start = seg_end + 1

        cdef set subscribers = node.get(which)
        if subscribers is None:
            node.put(which, {subscriber})
            self._patterns += 1
            return True
        if subscriber in subscribers:
            return False
        subscribers.add(subscriber)
        return True

    cpdef bint remove(self, object pattern, object subscriber) except -1:
        """Unsubscribe; True if ``subscriber`` was on ``pattern``.

        Nodes left empty are pruned, so add/remove cycles do not leak.
        """
        cdef str name = _require_str(pattern)
        cdef Py_ssize_t n = _normalized_length(name)
        cdef int code = _classify(name, n)
        if code == C_CHANNEL_INVALID:
            return False
        cdef const unsigned char *data = <const unsigned char *>PyUnicode_DATA(name)
        cdef int which
        cdef Py_ssize_t end = _prefix_end(data, n, code, &which)
        cdef Py_ssize_t start = 1
        cdef Py_ssize_t seg_end
        # path[i + 1] is a child of path[i]: kept for pruning.
        cdef list path = [self._root]
        cdef _Node node = self._root
        while start < end:
            seg_end = _segment_end(data, start, end)
            node = _child(node, data, start, seg_end)
            if node is None:
                return False
            path.append(node)
            start = seg_end + 1

        cdef set subscribers = node.get(which)
        if subscribers is None or subscriber not in subscribers:
            return False
        subscribers.discard(subscriber)
        if subscribers:
            return True
        node.put(which, None)
        self._patterns -= 1
        cdef Py_ssize_t i
        cdef _Node parent
        for i in range(len(path) - 2, -1, -1):
            if not (<_Node>path[i + 1]).is_empty():
                break
            parent = <_Node>path[i]
            parent.remove_child(<_Node>path[i + 1])
        return True

    cpdef list match(self, object channel):
        """Every distinct subscriber whose pattern matches ``channel``, once each.

        Order is unspecified. A name that is not a valid concrete channel
        (including a pattern, which nobody may publish to) matches nothing.
        """
        cdef set found = self._matching(channel)
        if found is None:
            return []
        return list(found)

    cdef set _exactly(self, str name):
        """The subscriber set of exactly this (valid) pattern, or None."""
        cdef Py_ssize_t n = _normalized_length(name)
        cdef int code = _classify(name, n)
        if code == C_CHANNEL_INVALID:
            return None
        cdef const unsigned char *data = <const unsigned char *>PyUnicode_DATA(name)
        cdef int which
        cdef Py_ssize_t end = _prefix_end(data, n, code, &which)
        cdef Py_ssize_t start = 1
        cdef Py_ssize_t seg_end
        cdef _Node node = self._root
        while start < end:
            seg_end = _segment_end(data, start, end)
            node = _child(node, data, start, seg_end)
            if node is None:
                return None
            start = seg_end + 1
        return node.get(which)

    cpdef Py_ssize_t count(self, object pattern) except -1:
        """Number of subscribers of exactly ``pattern`` (0 for invalid names)."""
        cdef set subscribers = self._exactly(_require_str(pattern))
        return 0 if subscribers is None else len(subscribers)

    cpdef list subscribers(self, object pattern):
        """The subscribers of exactly ``pattern`` ([] for invalid names)."""
        cdef set found = self._exactly(_require_str(pattern))
        return [] if found is None else list(found)

    cpdef Py_ssize_t count_matching(self, object channel) except -1:
        """``len(self.match(channel))``, without building the list."""
        cdef set found = self._matching(channel)
        return 0 if found is None else len(found)

    cpdef list patterns(self):
        """Every channel or pattern that has at least one subscriber."""
        cdef list found = []
        cdef list stack = [(u"", self._root)]
        cdef str prefix
        cdef _Node node
        while stack:
            prefix, node = stack.pop()
            if node.exact is not None:
                found.append(prefix)
            if node.star is not None:
                found.append(prefix + u"/*")
            if node.double_star is not None:
                found.append(prefix + u"/**")
            if node.kids is not None:
                for child in node.kids:
                    stack.append((prefix + u"/" + (<_Node>child).segment, child))
        return found

    cpdef clear(self):
        """Drop every subscription."""
        self._root = _Node()
        self._patterns = 0

    def __len__(self):
        """Number of channels/patterns with at least one subscriber."""
        return self._patterns

    cdef set _matching(self, object channel):
        """The matching subscribers as a set, or None if there are none.

        The set may be one of the trie's own (when a single group matched, the
        common case, no union is built), so callers must copy, never mutate.
        """
        cdef str name = _require_str(channel)
        cdef Py_ssize_t n = _normalized_length(name)
        if _classify(name, n) != C_CHANNEL_OK_CONCRETE:
            return None
        cdef const unsigned char *data = <const unsigned char *>PyUnicode_DATA(name)
        cdef _Node node = self._root
        cdef set first = None  # the first non-empty group, not copied
        cdef set merged = None  # built only once a second group shows up
        cdef set group
        cdef Py_ssize_t start = 1
        cdef Py_ssize_t seg_end
        cdef bint last = False
        while not last:
            seg_end = _segment_end(data, start, n)
            last = seg_end == n
            group = node.double_star  # /prefix/** of every ancestor
            if group is not None:
                if first is None:
                    first = group
                else:
                    merged = _merge(merged, first, group)
            if last:
                group = node.star  # /parent/*
                if group is not None:
                    if first is None:
                        first = group
                    else:
                        merged = _merge(merged, first, group)
            node = _child(node, data, start, seg_end)
            if node is None:
                break
            start = seg_end + 1
        if node is not None and node.exact is not None:
            if first is None:
                first = node.exact
            else:
                merged = _merge(merged, first, node.exact)
        return first if merged is None else merged
