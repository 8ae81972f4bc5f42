"""Redaction of secrets before anything is logged, tracked or printed.

Three kinds of secret are recognised:

1. values stored under a secret-looking key (a key with a word such as ``token``, ``password``,
   ``secret``, ``dsn``, ``credential``, ``authorization`` or a pair such as ``api_key``, see
   :func:`is_secret_key`);
2. the password of a URI (``postgresql://user:pw@host`` -> ``postgresql://user:***@host``) and
   secret-looking query parameters (``?token=abc`` -> ``?token=***``);
3. any value registered with :func:`register_secret` (e.g. a Label Studio API token read from the
   environment), wherever it appears inside a string.

:func:`redact` applies all three to a string, a mapping or a list (recursively) and returns a new
object; numbers, booleans and ``None`` pass through unchanged.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from typing import Any

MASK = "***"

#: Words that make a key secret when they appear as a whole part of it (``LS_API_TOKEN``,
#: ``dbPassword``, ``postgres_dsn``); ``max_new_tokens`` or ``secretary`` are not secret.
SECRET_WORDS = frozenset(
    {
        "token",
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "secret",
        "dsn",
        "credential",
        "credentials",
        "apikey",
        "authorization",
        "cookie",
        "sig",
        "signature",
    }
)
#: Adjacent word pairs that make a key secret (``api_key``, ``privateKey``, ``AWS_ACCESS_KEY``).
SECRET_PAIRS = frozenset({("api", "key"), ("private", "key"), ("access", "key"), ("secret", "key"), ("auth", "header")})

_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
# scheme://user:password@host  ->  scheme://user:***@host   (password never contains '@' or '/')
_URI_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@]*:)(?P<pw>[^\s@/]+)(?P<at>@)")
# ?token=abc&x=1  ->  ?token=***&x=1   (only when the parameter name is secret, see is_secret_key)
_QUERY_PARAM = re.compile(r"(?P<head>[?&;](?P<name>[^=&\s#?;]+)=)(?P<val>[^&\s#;]*)")

#: Registered values shorter than this are refused: masking "ab" everywhere would destroy logs.
MIN_SECRET_LENGTH = 4

_registered: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Remember ``value`` so that :func:`redact` masks it wherever it appears.

    ``None`` and empty values are ignored. Values shorter than ``MIN_SECRET_LENGTH`` (4) raise a
    ``ValueError``: they are too short to mask safely; use a real secret.
    """
    if not value:
        return
    if len(value) < MIN_SECRET_LENGTH:
        raise ValueError(
            f"secret of length {len(value)} is too short to redact safely "
            f"(minimum {MIN_SECRET_LENGTH} characters); use a longer token or password"
        )
    with _lock:
        _registered.add(value)


def forget_secrets() -> None:
    """Drop every value registered with :func:`register_secret` (for tests)."""
    with _lock:
        _registered.clear()


def uri_password(uri: str) -> str | None:
    """The password part of ``scheme://user:password@host...``, or ``None`` when it has none."""
    m = _URI_PASSWORD.search(uri or "")
    return m.group("pw") if m else None


def is_secret_key(key: str) -> bool:
    """True when a key names a secret: one of its words is in ``SECRET_WORDS`` or two adjacent
    words form a pair of ``SECRET_PAIRS``. Words split on non-letters and camelCase."""
    words = [w.lower() for w in _WORD.findall(str(key))]
    return any(w in SECRET_WORDS for w in words) or any(pair in SECRET_PAIRS for pair in zip(words, words[1:]))


def redact_text(text: str) -> str:
    """Mask URI passwords, secret query parameters and registered secrets inside ``text``."""
    out = _URI_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}{m.group('at')}", text)
    out = _QUERY_PARAM.sub(
        lambda m: f"{m.group('head')}{MASK}" if is_secret_key(m.group("name")) and m.group("val") else m.group(0), out
    )
    with _lock:
        secrets = sorted(_registered, key=len, reverse=True)  # longest first: no partial leftovers
    for secret in secrets:
        if secret in out:
            out = out.replace(secret, MASK)
    return out


def redact(obj: Any) -> Any:
    """Return a copy of ``obj`` with every secret masked as ``"***"``.

    Args:
        obj: a string, a mapping (keys kept, values of secret-looking keys replaced entirely),
            a list/tuple/set (returned as a list), or a scalar (returned unchanged, except that
            its string form is checked when it is not a number/bool/None).

    Returns:
        The redacted copy. Mappings come back as ``dict``; the input is never modified.
    """
    if obj is None or isinstance(obj, (bool, int, float)):
        return obj
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, Mapping):
        return {k: (MASK if is_secret_key(k) and v not in (None, "") else redact(v)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [redact(v) for v in obj]
    return redact_text(str(obj))


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's message (and its arguments) in place.

    Install on a handler or logger: ``logger.addFilter(RedactingFilter())``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to logging's own error path
            return True
        record.msg = redact_text(message)
        record.args = None
        return True
