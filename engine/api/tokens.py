"""Connection tokens: a security policy that admits a handshake with a valid JWT.

    policy = JwtPolicy(secret=os.environ["JWT_SECRET"], audience="chat")
    server = BayeuxServer(options, policy=policy)

or, with no code, `--jwt-secret-file`, `--jwt-public-key-file` or
`--jwt-jwks-url` (and `--jwt-audience`, `--jwt-issuer`).

The token is looked for, in order, in the handshake's `ext.token` (the
CometD JS client: `cometd.handshake({ext: {token: t}})`), in an
`Authorization: Bearer <token>` header of the handshake request (of the
WebSocket upgrade on that transport), and in a cookie when `cookie` names
one.  It is verified with PyJWT: signature, `exp`, `nbf` (with `leeway`),
`aud` and `iss` when configured; the algorithms are those of the key kind
(HMAC for a secret, RSA/ECDSA/EdDSA for a public key or a JWKS), never
`none`, and an HMAC token is never checked against a public key.

A refused handshake's error names why: `403:token_missing:handshake_denied`,
`token_expired`, `token_not_yet_valid`, `token_audience`, `token_issuer`,
`token_algorithm` or `token_invalid`.

A verified session gets `session.attributes["claims"]` (the token's claims)
and `session.attributes["user"]` (its `sub`), for authorizers such as
`/private/{sub}/**`; a `channels` claim, when present, lists the only
channels the session may subscribe to.

Expiry: when the token's `exp` passes, the session is ended
(`BayeuxCore.end_session`): its held connect, or its next one, is answered
`401::token_expired` with advice `{"reconnect": "handshake"}`.  The CometD
clients then handshake again on their own; an extension that puts a fresh
token in the handshake's `ext` (or a refreshed cookie) gets a new session.

Keys of a JWKS URL are fetched (aiohttp, `jwks_timeout`) and kept
`jwks_cache` seconds; a token whose `kid` is not among them refreshes them,
at most once per `JWKS_RETRY` seconds; when the URL is down, the keys
already fetched go on being used, and a token no known key verifies is
refused (logged once per cause).
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import jwt

from engine.api.context import current_context
from engine.api.policy import Deny, SecurityPolicy, deny
from engine.config import mask_password
from engine.protocol import errors
from engine.protocol.message import Message
from engine.ratelog import CauseLog

if TYPE_CHECKING:
    from engine.protocol.core import BayeuxCore
    from engine.protocol.session import Session

__all__ = ["JwtPolicy"]

log = logging.getLogger("engine.tokens")
limit_log = CauseLog(log)

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
PUBLIC_KEY_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
JWKS_RETRY = 10.0  # s between fetches of a JWKS for unknown key ids
EXPIRY_CHECK = 1.0  # s between checks for expired tokens
MAX_TOKEN = 8192  # characters of a token (bigger ones are refused unread)


class JwtPolicy(SecurityPolicy):
    # The Authorization header and cookies (only those are kept per WebSocket).
    uses_http_context = frozenset({"authorization", "cookie"})

    def __init__(
        self,
        *,
        secret: str | bytes | None = None,
        public_key: str | bytes | None = None,
        jwks_url: str | None = None,
        algorithms: list[str] | None = None,
        audience: str | list[str] | None = None,
        issuer: str | None = None,
        leeway: float = 0.0,
        require_exp: bool = False,
        cookie: str | None = None,
        jwks_cache: float = 300.0,
        jwks_timeout: float = 2.0,
    ) -> None:
        super().__init__()
        kinds = sum(k is not None and k != "" for k in (secret, public_key, jwks_url))
        if kinds != 1:
            raise ValueError("JwtPolicy needs exactly one of secret, public_key, jwks_url")
        allowed = HMAC_ALGORITHMS if secret else PUBLIC_KEY_ALGORITHMS
        self.algorithms = list(algorithms or allowed)
        wrong = [a for a in self.algorithms if a not in allowed]
        if wrong:
            raise ValueError(f"algorithms {wrong} do not fit the key (allowed: {list(allowed)})")
        self.key: Any = secret
        if public_key:
            pem = public_key.encode() if isinstance(public_key, str) else public_key
            try:
                from cryptography.hazmat.primitives.serialization import load_pem_public_key

                self.key = load_pem_public_key(pem)
            except ValueError as exc:
                raise ValueError(f"public_key is not a PEM public key: {exc}") from None
        self.jwks_url = jwks_url
        self.jwks_shown = mask_password(jwks_url or "")  # in log lines: no password
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway
        self.require = ["exp"] if require_exp else []
        self.cookie = cookie
        self.jwks_cache = jwks_cache
        self.jwks_timeout = jwks_timeout
        self._jwks: dict[str, Any] = {}  # kid -> PyJWK
        self._jwks_at = 0.0  # when last fetched (monotonic; 0: never)
        self._jwks_tried = 0.0  # when last tried
        self._jwks_lock: asyncio.Lock | None = None
        self._core: BayeuxCore | None = None
        self._expiries: list[tuple[float, str]] = []  # (exp, clientId), a heap
        self._timer: asyncio.TimerHandle | None = None
        self.refused = 0
        self.expired = 0

    def bind(self, core: Any) -> None:
        self._core = core

    # ------------------------------------------------------------ decisions

    async def can_handshake(self, session: Session, message: Message) -> bool | Deny:
        token = self._token(message)
        if token is None:
            return self._refuse("missing", "a handshake without a token")
        try:
            key = await self._key_for(token)
            claims = jwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": self.require, "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            return self._refuse("expired", "an expired token")
        except jwt.ImmatureSignatureError:
            return self._refuse("not_yet_valid", "a token not valid yet (nbf)")
        except jwt.InvalidAudienceError:
            return self._refuse("audience", "a token for another audience")
        except jwt.InvalidIssuerError:
            return self._refuse("issuer", "a token of another issuer")
        except jwt.InvalidAlgorithmError:
            return self._refuse("algorithm", "a token signed with an algorithm not allowed")
        except (jwt.InvalidTokenError, jwt.PyJWKError, ValueError, TypeError) as exc:
            return self._refuse("invalid", f"an invalid token ({type(exc).__name__}: {exc})")
        attributes = session.attributes
        if attributes is None:
            attributes = session.attributes = {}
        attributes["claims"] = claims
        attributes["user"] = claims.get("sub")
        expiry = claims.get("exp")
        if isinstance(expiry, int | float):
            self._expire_at(float(expiry), session.id)
        return True

    def can_subscribe(self, session: Session, channel: str, message: Message) -> bool:
        claims = (session.attributes or {}).get("claims")
        allowed = claims.get("channels") if isinstance(claims, dict) else None
        if allowed is None:
            return True
        return isinstance(allowed, list) and channel in allowed

    # --------------------------------------------------------------- tokens

    def _token(self, message: Message) -> str | None:
        ext = message.get("ext")
        token = ext.get("token") if isinstance(ext, dict) else None
        context = current_context()
        if token is None and context is not None:
            token = context.bearer_token()
            if token is None and self.cookie:
                token = context.cookie(self.cookie)
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN:
            return None
        return token

    def _refuse(self, cause: str, what: str) -> Deny:
        """Refused: `403:token_<cause>:handshake_denied` for the client, one log line per cause."""
        self.refused += 1
        limit_log.warning(f"jwt:{cause}", "handshake refused: %s (%d refused)", what, self.refused)
        return deny(f"token_{cause}")

    async def _key_for(self, token: str) -> Any:
        if self.jwks_url is None:
            return self.key
        kid = jwt.get_unverified_header(token).get("kid")
        now = time.monotonic()
        wanted = kid not in self._jwks or now - self._jwks_at > self.jwks_cache
        # Never fetched: retried soon; else at most every JWKS_RETRY seconds.
        if wanted and now - self._jwks_tried >= (JWKS_RETRY if self._jwks_at else 0.5):
            await self._fetch_jwks()
        if kid is None and len(self._jwks) == 1:
            return next(iter(self._jwks.values())).key
        found = self._jwks.get(kid)  # type: ignore[arg-type]
        if found is None:
            raise jwt.InvalidTokenError(f"no key {kid!r} in the JWKS of {self.jwks_shown}")
        return found.key

    async def _fetch_jwks(self) -> None:
        if self._jwks_lock is None:
            self._jwks_lock = asyncio.Lock()
        async with self._jwks_lock:  # one fetch at a time; the others use its keys
            now = time.monotonic()
            if now - self._jwks_tried < 0.5:
                return
            self._jwks_tried = now
            import aiohttp

            try:
                timeout = aiohttp.ClientTimeout(total=self.jwks_timeout)
                async with (
                    aiohttp.ClientSession(timeout=timeout) as client,
                    client.get(self.jwks_url) as answer,  # type: ignore[arg-type]
                ):
                    answer.raise_for_status()
                    keys = jwt.PyJWKSet.from_dict(json.loads(await answer.read()))
            except (aiohttp.ClientError, TimeoutError, ValueError, jwt.PyJWKError) as exc:
                limit_log.warning(
                    "jwks_down",
                    "the JWKS at %s cannot be read (%s); %d keys fetched before stay in use",
                    self.jwks_shown,
                    mask_password(str(exc)),  # (aiohttp's errors quote the URL)
                    len(self._jwks),
                )
                return
            # (A key without a kid serves tokens without one, if it is alone.)
            self._jwks = {k.key_id or f"#{i}": k for i, k in enumerate(keys.keys)}
            self._jwks_at = time.monotonic()

    # --------------------------------------------------------------- expiry

    def _expire_at(self, expiry: float, client_id: str) -> None:
        heapq.heappush(self._expiries, (expiry, client_id))
        if self._timer is None and self._core is not None:
            self._timer = self._core.loop.call_later(EXPIRY_CHECK, self._check_expiries)

    def _check_expiries(self) -> None:
        self._timer = None
        core = self._core
        if core is None:
            return
        now = time.time()
        heap = self._expiries
        while heap and heap[0][0] <= now:
            _, client_id = heapq.heappop(heap)
            session = core.sessions.get(client_id)
            if session is not None and not session.removed:
                self.expired += 1
                core.end_session(
                    session, errors.TOKEN_EXPIRED, {"reconnect": "handshake", "interval": 0}
                )
        if len(heap) > 2 * len(core.sessions) + 1000:
            # Mostly sessions that ended before their token: forget them.
            self._expiries = heap = [e for e in heap if e[1] in core.sessions]
            heapq.heapify(heap)
        if heap:
            self._timer = core.loop.call_later(EXPIRY_CHECK, self._check_expiries)

    @classmethod
    def from_options(cls, options: Any) -> JwtPolicy:
        """The policy the `jwt_*` options describe."""
        algorithms = [a.strip() for a in options.jwt_algorithms.split(",") if a.strip()]
        audience = [a.strip() for a in options.jwt_audience.split(",") if a.strip()]
        return cls(
            secret=options.jwt_secret or None,
            public_key=options.jwt_public_key or None,
            jwks_url=options.jwt_jwks_url or None,
            algorithms=algorithms or None,
            audience=(audience[0] if len(audience) == 1 else audience) or None,
            issuer=options.jwt_issuer or None,
            cookie=options.jwt_cookie or None,
        )
