import asyncio
from abc import abstractmethod
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from engine.api.extensions import Extension
from engine.api.hooks import Hooks
from engine.metrics import Histogram
from engine.options import ServerOptions
from engine.protocol.session import EventSink, Exchange
from engine.stats import Counters

T = TypeVar("T")

META_HANDSHAKE: str
META_CONNECT: str
META_DISCONNECT: str
META_SUBSCRIBE: str
META_UNSUBSCRIBE: str
HTTP_TRANSPORTS: frozenset[str]
NEVER: float
MAX_ID_LENGTH: int

def valid_id(value: object) -> bool: ...
def encode_reply(reply: dict[str, Any]) -> bytes: ...

class AckState:
    batch: int
    unacked: list[tuple[int, bytes]]
    pending: list[bytes] | None
    def __init__(self) -> None: ...

class Hold:
    session: Session
    exchange: Exchange
    message_id: Any
    deadline: float
    counted_browser: str | None
    advise: bool
    request: dict[str, Any] | None
    def __init__(
        self, session: Session, exchange: Exchange, message_id: Any, deadline: float, advise: bool
    ) -> None: ...

class Session:
    id: str
    browser_id: str | None
    transport: str
    queue: list[bytes] | None
    queued_bytes: int
    subscriptions: set[str] | None
    @property
    def hold(self) -> Hold | None: ...  # readonly: the core schedules
    @property
    def hold_entry(self) -> int: ...  # readonly: the core schedules
    @property
    def expires_at(self) -> float: ...  # readonly: the core schedules
    @property
    def expiry_slot(self) -> int: ...  # readonly: the core schedules
    connected: bool
    removed: bool
    @property
    def flush_pending(self) -> bool: ...  # readonly: the core schedules
    advice_dirty: bool
    dropped: int
    sink: EventSink | None
    extensions: list[Extension] | None
    local: Callable[[bytes], None] | None
    attributes: dict[str, Any] | None
    ack: AckState | None
    @property
    def lazy_due(self) -> float: ...  # readonly: the core schedules
    bucket: list[float] | None
    address: str | None
    resumable: bool
    def __init__(self, client_id: str, browser_id: str | None, transport: str) -> None: ...
    def take_queue(self) -> list[bytes]: ...
    def take_batch(self, max_bytes: int) -> list[bytes]: ...

class TimerWheel(Generic[T]):
    resolution: float
    slots: dict[int, list[T]]
    next_slot: int
    def __init__(self, resolution: float, now: float) -> None: ...
    def slot_of(self, when: float) -> int: ...
    def add(self, when: float, item: T) -> int: ...
    def add_to_slot(self, slot: int, item: T) -> None: ...
    def due(self, now: float) -> Iterator[T]: ...
    def next_due(self) -> float: ...
    def __len__(self) -> int: ...

class SessionCore:
    options: ServerOptions
    loop: asyncio.AbstractEventLoop
    stats: Counters
    hooks: Hooks
    sessions: dict[str, Session]
    browsers: dict[str, int]
    draining: bool
    holds: TimerWheel[Session]
    expiry: TimerWheel[Session]
    lazy: TimerWheel[Session]
    write_flushers: list[Callable[[], None]]
    session_extensions: int
    timeout_s: float
    timeout_jitter: float
    lazy_timeout_s: float
    max_interval_s: float
    after_reply_s: float
    advice: dict[str, Any]
    max_batch_bytes: int
    trust_client_session: bool
    queued_total: int  # messages in session queues (running total)
    held_total: int  # held /meta/connect requests
    by_transport: dict[str, int]  # sessions per transport (BayeuxCore keeps it)
    arrived: float  # perf_counter when the batch being processed arrived, else 0
    publish_to_write: Histogram | None
    def __init__(
        self,
        options: ServerOptions,
        loop: asyncio.AbstractEventLoop,
        stats: Counters,
        hooks: Hooks,
        hold_resolution: float,
        expiry_resolution: float,
    ) -> None: ...
    @property
    def extensions_active(self) -> bool: ...
    def _failure(
        self, message: dict[str, Any], error: str, advice: Any = True
    ) -> dict[str, Any]: ...
    def _expire_at(self, session: Session, when: float) -> None: ...
    def _touch(self, session: Session) -> None: ...
    def lookup(self, message: dict[str, Any], exchange: Exchange) -> Session | None: ...
    def deliver(self, session: Session, encoded: bytes, lazy: bool = False) -> None: ...
    def _flush(self) -> None: ...
    def _send_queued(self, sessions: list[Session]) -> None: ...
    def take(self, session: Session, max_bytes: int) -> list[bytes]: ...
    def requeue(self, session: Session, queue: list[bytes], size: int) -> None: ...
    def discard_queue(self, session: Session) -> int: ...
    def _unhold(self, hold: Hold) -> Session: ...
    def _release(self, hold: Hold, advice: dict[str, Any] | None) -> None: ...
    def release_due_holds(self, now: float) -> None: ...
    def _process_now(self, messages: list[Any], exchange: Exchange) -> None: ...
    # Implemented by the Python subclass (engine.protocol.core.BayeuxCore):
    @abstractmethod
    def _answer_handshake(self, message: dict[str, Any], exchange: Exchange) -> None: ...
    @abstractmethod
    def _subscribe(self, message: dict[str, Any], exchange: Exchange) -> dict[str, Any]: ...
    @abstractmethod
    def _unsubscribe(self, message: dict[str, Any], exchange: Exchange) -> dict[str, Any]: ...
    @abstractmethod
    def _disconnect(self, message: dict[str, Any], exchange: Exchange) -> dict[str, Any]: ...
    @abstractmethod
    def _publish(
        self, message: dict[str, Any], exchange: Exchange, channel: str
    ) -> dict[str, Any]: ...
    @abstractmethod
    def _unknown_session(
        self, message: dict[str, Any], meta: bool, exchange: Exchange | None = None
    ) -> dict[str, Any]: ...
    @abstractmethod
    def _multiple_clients(self, session: Session, message: dict[str, Any]) -> dict[str, Any]: ...
    @abstractmethod
    def _supersede(self, hold: Hold) -> None: ...
    @abstractmethod
    def _resume(self, session: Session, message: dict[str, Any], exchange: Exchange) -> bool: ...
    @abstractmethod
    def _refused_by_extension(self, message: dict[str, Any]) -> dict[str, Any] | None: ...
    @abstractmethod
    def _extend_reply(
        self, session: Session | None, reply: dict[str, Any], request: dict[str, Any]
    ) -> bool: ...
    @abstractmethod
    def _extend_delivery(self, session: Session, encoded: bytes) -> bytes | None: ...
