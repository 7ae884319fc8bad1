"""Who may use the page: one secret token, browser sessions signed with a key derived from it,
and a CSRF token bound to each session.

API clients send `Authorization: Bearer TOKEN`. A browser logs in once with the token and gets
a session cookie (HttpOnly, SameSite=Strict, expiring) whose value is signed with HMAC-SHA256;
changing the token invalidates every session. A browser request that changes state must also
carry the session's CSRF token (header `X-CSRF-Token`): a cookie alone, which another site can
make a browser send, is refused. Only the standard library is used (hmac, secrets).
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from vp import paths

TOKEN_ENV = "VP_UI_TOKEN"
COOKIE = "vp_session"
# The apps origin's own session (vp ui --apps-port): a page cookie never opens an app there,
# and an app cookie never opens the control page.
APP_COOKIE = "vp_app"
TICKET_SECONDS = 60.0
CSRF_HEADER = "x-csrf-token"
SESSION_SECONDS = 12 * 3600


def token_file() -> Path:
    return paths.config_dir() / "ui-token"


def load_token() -> tuple[str, str]:
    """The token and where it came from: `VP_UI_TOKEN`, else the user config dir's file,
    made (0600, never group/world readable even for an instant) on first start."""
    from_env = os.environ.get(TOKEN_ENV, "").strip()
    if from_env:
        return from_env, TOKEN_ENV
    path = token_file()
    paths.ensure_private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        token = path.read_text().strip()
        if token:
            return token, str(path)
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token, str(path)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Session:
    nonce: str
    expires: float


class Keys:
    """Checks the token and signs/verifies session cookies and CSRF tokens."""

    def __init__(self, token: str, lifetime: float = SESSION_SECONDS, purpose: bytes = b"session"):
        self._token = token.encode()
        # One key per purpose: a value signed for one (a page session, an app session, a
        # one-minute ticket to the apps origin) is never accepted as another.
        self._key = hmac.new(self._token, b"vp-ui " + purpose + b" v1", hashlib.sha256).digest()
        self.lifetime = lifetime

    def for_purpose(self, purpose: bytes, lifetime: float) -> Keys:
        return Keys(self._token.decode(), lifetime, purpose)

    def token_ok(self, candidate: str | None) -> bool:
        return bool(candidate) and hmac.compare_digest(candidate.encode(), self._token)

    def _sign(self, payload: bytes) -> str:
        return _b64(hmac.new(self._key, payload, hashlib.sha256).digest())

    def new_session(self, now: float | None = None) -> str:
        """A cookie value: base64(JSON{n, exp}) '.' signature."""
        exp = (now or time.time()) + self.lifetime
        payload = json.dumps({"n": secrets.token_urlsafe(16), "exp": int(exp)}).encode()
        return f"{_b64(payload)}.{self._sign(payload)}"

    def session(self, cookie: str | None, now: float | None = None) -> Session | None:
        if not cookie or "." not in cookie:
            return None
        body, sig = cookie.rsplit(".", 1)
        try:
            payload = _unb64(body)
        except ValueError:
            return None
        if not hmac.compare_digest(sig, self._sign(payload)):
            return None
        try:
            data = json.loads(payload)
            session = Session(str(data["n"]), float(data["exp"]))
        except (ValueError, KeyError, TypeError):
            return None
        return session if session.expires > (now or time.time()) else None

    def csrf(self, session: Session) -> str:
        return self._sign(b"csrf:" + session.nonce.encode())

    def csrf_ok(self, session: Session, candidate: str | None) -> bool:
        return bool(candidate) and hmac.compare_digest(candidate, self.csrf(session))


class LoginLimiter:
    """At most `per_client` failed logins per client and `overall` in all per `window` seconds:
    guessing a 256-bit token is hopeless anyway, but a login form must not be a free oracle."""

    def __init__(self, per_client: int = 5, overall: int = 30, window: float = 60.0):
        self.per_client, self.overall, self.window = per_client, overall, window
        self._fails: dict[str, collections.deque[float]] = collections.defaultdict(
            collections.deque
        )
        self._all: collections.deque[float] = collections.deque()

    def _trim(self, q: collections.deque[float], now: float) -> None:
        while q and q[0] < now - self.window:
            q.popleft()

    def allowed(self, client: str, now: float | None = None) -> bool:
        now = now or time.monotonic()
        q = self._fails[client]
        self._trim(q, now)
        self._trim(self._all, now)
        return len(q) < self.per_client and len(self._all) < self.overall

    def failed(self, client: str, now: float | None = None) -> None:
        now = now or time.monotonic()
        self._fails[client].append(now)
        self._all.append(now)
