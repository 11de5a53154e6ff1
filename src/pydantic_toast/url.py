"""Storage URLs: parsed once into a frozen object, masked wherever they are shown."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from .exceptions import StorageValidationError

__all__ = ["MaskedURL", "StorageURL", "mask_secrets"]

_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*$")
_MASK = "***"
# user:password@ inside any URL-looking text, for scrubbing driver messages.
_USERINFO = re.compile(r"(?P<prefix>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<password>[^@\s]*)(?=@)", re.IGNORECASE)
# password=… in a query string (libpq's password and sslpassword, and similar driver options).
_QUERY_PASSWORD = re.compile(r"(?P<prefix>[?&][a-z_]*password=)(?P<password>[^&#\s]*)", re.IGNORECASE)


@dataclass(frozen=True, slots=True, repr=False)
class StorageURL:
    """A storage URL split into parts. `str()` and `repr()` never show the password."""

    raw: str
    scheme: str
    username: str | None
    password: str | None
    host: str | None
    port: int | None
    path: str
    query: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, url: object) -> StorageURL:
        """Parse `url`, raising `StorageValidationError` (with the URL masked) when it is malformed."""
        if not isinstance(url, str):
            raise StorageValidationError(
                f"a storage URL must be a string such as 'sqlite:///toast.db', not {type(url).__name__}",
                expected="str",
                actual=type(url).__name__,
            )
        shown = mask_secrets(url)
        if "://" not in url:
            raise StorageValidationError(
                f"storage URL {shown!r} has no scheme; write it as 'scheme://…', e.g. 'sqlite:///toast.db'",
                expected="scheme://…",
                actual=shown,
            )
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            hint = ""
            if "+cluster" in url.split("://", 1)[0] and "," in url.split("://", 1)[1]:
                hint = "; name further seed nodes as '?node=host:port&node=host:port', not with commas"
            raise StorageValidationError(
                f"storage URL {shown!r} is malformed: {mask_secrets(str(exc))}{hint}", actual=shown
            ) from None
        scheme = parts.scheme.lower()
        if not _SCHEME.match(scheme):
            raise StorageValidationError(
                f"storage URL {shown!r} has an invalid scheme {parts.scheme!r}", actual=shown
            )
        try:
            query = tuple(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query)))
        except ValueError:
            raise StorageValidationError(
                f"storage URL {shown!r} has a malformed query string; use '?key=value&key2=value2'",
                actual=shown,
            ) from None
        return cls(
            raw=url,
            scheme=scheme,
            username=unquote(parts.username) if parts.username is not None else None,
            password=unquote(parts.password) if parts.password is not None else None,
            host=parts.hostname,
            port=port,
            path=parts.path,
            query=query,
        )

    @property
    def masked(self) -> str:
        """The URL as given, with passwords (user info and query options) replaced by `***`."""
        query_secrets = [value for key, value in self.query if key.lower().endswith("password")]
        return mask_secrets(self.raw, self.password, *query_secrets)

    @property
    def options(self) -> dict[str, str]:
        """Query parameters as a dict (the last value wins when a key repeats)."""
        return dict(self.query)

    def __str__(self) -> str:
        return self.masked

    def __repr__(self) -> str:
        # The masked text rather than the fields: `query` may hold `password=…` options.
        return f"StorageURL({self.masked!r})"


class MaskedURL(str):
    """A storage URL string whose repr hides the password.

    The model's configuration keeps the URL in this form, so `print(Model.model_config)`, logs of
    the config and tracebacks showing it never reveal the password; the text itself is unchanged.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(mask_secrets(str.__str__(self)))


def mask_secrets(text: str, *passwords: str | None) -> str:
    """Replace URL passwords in `text` (and any of `passwords`, raw or URL-quoted) with `***`."""
    masked = _USERINFO.sub(lambda m: m.group("prefix") + _MASK, text)
    masked = _QUERY_PASSWORD.sub(lambda m: m.group("prefix") + _MASK, masked)
    for password in passwords:
        if password:
            for form in {password, quote(password, safe="")}:
                masked = masked.replace(form, _MASK)
    return masked
