"""Audio intake from a URL or a server-local path, safe against SSRF and path traversal.

URLs (:func:`fetch_url`)
    Only ``http``/``https`` URLs with a host are fetched (anything else: 422
    ``invalid_url``). Every connection, including each redirect hop and each address a
    name resolves to, goes through :class:`_GuardedConnectionMixin`, which resolves the
    host once, drops every address :func:`is_address_permitted` refuses, connects to a
    permitted *literal* address (so there is no second lookup a rebinding DNS server could
    answer differently) and checks the connected peer again before a byte is sent. If no
    address is left, nothing is connected and the fetch fails with 403 ``url_forbidden``.
    TLS still verifies the certificate against the URL's host name, and SNI carries it.

    Redirects are followed by hand, at most ``settings.url_max_redirects`` of them
    (502 ``too_many_redirects``); each hop is validated like the first (a redirect to a
    non-http(s) scheme or a refused address: 403 ``url_forbidden``; an unparsable
    ``Location``: 502 ``bad_redirect``). The body is streamed and capped at
    ``settings.max_upload_bytes`` (413 ``payload_too_large``, early when the upstream
    ``Content-Length`` already says so). Environment proxies are ignored (``trust_env``
    off), so the address check is always on the real peer.

    Other failures: timeouts → 504 ``upstream_timeout``; unknown host or refused
    connection → 502 ``upstream_unreachable``; TLS failure → 502 ``upstream_tls_error``;
    non-2xx final status → 502 ``upstream_status``; a connection that breaks mid-body →
    502 ``upstream_error``. Credentials in the URL are used (basic auth) but never logged:
    logs show scheme, host, port and path only.

Local paths (:func:`resolve_local_path`, :func:`read_local_file`)
    Refused unless ``settings.local_audio_dir`` is set (403 ``local_paths_disabled``).
    The path (relative ones are taken relative to that directory) is resolved with every
    symlink and ``..`` followed and must stay inside the resolved directory (403
    ``path_forbidden``; checked before existence, so it reveals nothing about files
    outside). A missing path or one that is not a regular file → 404 ``file_not_found``;
    larger than ``settings.max_upload_bytes`` → 413. Messages only echo the path the
    client sent. Reading re-checks the opened file descriptor, so a path swapped for a
    symlink between the check and the read is still refused.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import socket
import stat
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urljoin, urlsplit

import requests
import requests.adapters
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    NameResolutionError,
    NewConnectionError,
    ReadTimeoutError,
)
from urllib3.exceptions import SSLError as Urllib3SSLError
from urllib3.util.connection import allowed_gai_family, create_connection

from app.audio.limits import CHUNK_BYTES, too_large
from app.errors import ApiError, Forbidden, InvalidField, NotFound, UpstreamError, UpstreamTimeout
from app.settings import Settings

USER_AGENT = "asr-api/0.1"

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Cloud instance-metadata endpoints (AWS/GCP/Azure/OpenStack, AWS IPv6, Alibaba).
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

_FORBIDDEN_MESSAGE = "The URL resolves to an address this server may not fetch from."
_FORBIDDEN_REDIRECT_MESSAGE = "The URL redirects to an address this server may not fetch from."


# --------------------------------------------------------------------------- address policy


def _parse_networks(networks: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in networks)


def _is_public(ip: IPAddress) -> bool:
    if (
        not ip.is_global
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    ):
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        # Addresses that tunnel to an IPv4 address must tunnel to a public one.
        embedded = [ip.sixtofour, ip.teredo[1] if ip.teredo else None]
        if ip in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        return all(e is None or _is_public(e) for e in embedded)
    return True


@dataclass(frozen=True)
class _AddressPolicy:
    allowed: tuple[IPNetwork, ...]

    def permits(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip in METADATA_ADDRESSES:
            # Only an allow-list entry naming exactly this host unlocks a metadata endpoint;
            # a broad entry such as 0.0.0.0/0 or 169.254.0.0/16 does not.
            return any(net.num_addresses == 1 and ip in net for net in self.allowed)
        if any(ip in net for net in self.allowed):
            return True
        return _is_public(ip)


def is_address_permitted(address: str, allowed_networks: Iterable[str] = ()) -> bool:
    """Whether an audio URL may connect to the IP literal ``address``.

    Public unicast addresses are permitted. Private, loopback, link-local, multicast,
    reserved, unspecified and shared (100.64/10) addresses are refused, also when written
    as IPv4-mapped IPv6 or embedded in 6to4/Teredo/NAT64 addresses, unless they fall inside
    one of ``allowed_networks`` (CIDR strings). Cloud metadata addresses
    (:data:`METADATA_ADDRESSES`) are refused unless an allowed network is exactly that
    single host (``169.254.169.254/32``).
    """
    return _AddressPolicy(_parse_networks(allowed_networks)).permits(address)


class _AddressRefused(Exception):
    """Raised inside a connection attempt when no permitted address is left."""


# --------------------------------------------------------------------------- guarded transport


class _GuardedConnectionMixin:
    """urllib3 connection that only ever connects to addresses its policy permits."""

    address_policy: ClassVar[_AddressPolicy]

    # Attributes provided by urllib3's HTTPConnection.
    host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any

    def _new_conn(self) -> socket.socket:
        host = self.host.strip("[]")
        try:
            infos = socket.getaddrinfo(host, self.port, allowed_gai_family(), socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[arg-type]
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        permitted = [a for a in addresses if self.address_policy.permits(a)]
        if not permitted:
            raise _AddressRefused(host)
        last_error: OSError | None = None
        for address in permitted:
            try:
                sock = create_connection(
                    (address, self.port),
                    self.timeout,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except OSError as exc:
                last_error = exc
                continue
            try:
                peer = str(sock.getpeername()[0])
            except OSError as exc:
                sock.close()
                last_error = exc
                continue
            if not self.address_policy.permits(peer):
                sock.close()
                raise _AddressRefused(host)
            sys.audit("http.client.connect", self, self.host, self.port)
            return sock
        if isinstance(last_error, TimeoutError):
            raise ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})"
            ) from last_error
        raise NewConnectionError(self, f"Failed to establish a new connection: {last_error}") from last_error  # type: ignore[arg-type]


@functools.lru_cache(maxsize=32)
def _pool_classes(allowed: tuple[str, ...]) -> dict[str, type[HTTPConnectionPool]]:
    policy = _AddressPolicy(_parse_networks(allowed))
    http_conn = type("GuardedHTTPConnection", (_GuardedConnectionMixin, HTTPConnection), {"address_policy": policy})
    https_conn = type("GuardedHTTPSConnection", (_GuardedConnectionMixin, HTTPSConnection), {"address_policy": policy})
    return {
        "http": type("GuardedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
        "https": type("GuardedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}),
    }


class _GuardedAdapter(requests.adapters.HTTPAdapter):
    """A requests adapter whose pools use the guarded connection classes; no proxies."""

    def __init__(self, allowed_networks: tuple[str, ...]):
        self._pool_classes_by_scheme = _pool_classes(tuple(allowed_networks))
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(self._pool_classes_by_scheme)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        # A proxy would make the address check apply to the proxy, not the real peer.
        raise RuntimeError("proxies are not supported for audio URLs")


def _session(settings: Settings) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    adapter = _GuardedAdapter(settings.url_allowed_networks)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers.update({"User-Agent": USER_AGENT, "Accept": "*/*", "Accept-Encoding": "identity"})
    return session


# --------------------------------------------------------------------------- URL fetching


def _redacted(url: str) -> str:
    """``scheme://host[:port]/path`` without credentials, query or fragment, for logs."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable URL>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _validate_url(url: object, *, redirect: bool) -> str:
    """Return ``url`` stripped if it is an http(s) URL with a host; raise otherwise."""

    def invalid(message: str) -> ApiError:
        if redirect:
            return UpstreamError("The URL redirects to a location that is not a valid URL.", code="bad_redirect")
        return InvalidField(message, code="invalid_url")

    if not isinstance(url, str) or not url.strip():
        raise invalid("The URL is empty.")
    url = url.strip()
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise invalid("The URL contains whitespace or control characters.")
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a bad port
    except ValueError:
        raise invalid("The URL could not be parsed.") from None
    if parts.scheme.lower() not in ("http", "https"):
        if redirect:
            raise Forbidden("The URL redirects to a location this server may not fetch from.", code="url_forbidden")
        raise invalid("Only http:// and https:// URLs can be fetched.")
    if not parts.hostname:
        raise invalid("The URL has no host name.")
    return url


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it wraps (cause, context, ``reason``, exception args)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        linked = [e.__cause__, e.__context__, getattr(e, "reason", None), *e.args]
        todo.extend(x for x in linked if isinstance(x, BaseException))


def _map_request_error(exc: requests.RequestException, settings: Settings, *, redirect: bool) -> ApiError:
    chain = list(_exception_chain(exc))

    def has(*types: type[BaseException]) -> bool:
        return any(isinstance(e, types) for e in chain)

    if has(NameResolutionError):
        return UpstreamError("The host name in the URL could not be resolved.", code="upstream_unreachable")
    if has(requests.exceptions.SSLError, Urllib3SSLError):
        return UpstreamError(
            "A secure (TLS) connection to the URL's server could not be established or verified.",
            code="upstream_tls_error",
        )
    timed_out = has(requests.Timeout, ReadTimeoutError, TimeoutError) or any(
        isinstance(e, ConnectTimeoutError) and not isinstance(e, NewConnectionError) for e in chain
    )
    if timed_out:
        return UpstreamTimeout(
            "The URL's server did not respond in time (connect timeout "
            f"{settings.url_connect_timeout_s:g} s, read timeout {settings.url_read_timeout_s:g} s).",
        )
    if has(NewConnectionError):
        return UpstreamError("Could not connect to the URL's server.", code="upstream_unreachable")
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema)):
        return _invalid_url_error(redirect)
    return UpstreamError("The connection to the URL's server failed before the audio arrived.")


def _invalid_url_error(redirect: bool) -> ApiError:
    if redirect:
        return UpstreamError("The URL redirects to a location that is not a valid URL.", code="bad_redirect")
    return InvalidField("The URL could not be parsed.", code="invalid_url")


def _url_is_requestable(url: str) -> bool:
    try:
        requests.models.PreparedRequest().prepare_url(url, None)
    except (ValueError, requests.RequestException):
        return False
    return True


def _read_capped(response: requests.Response, max_bytes: int) -> bytes:
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
        raise too_large(max_bytes, what="The file at the URL")
    parts: list[bytes] = []
    received = 0
    for chunk in response.iter_content(chunk_size=CHUNK_BYTES):
        received += len(chunk)
        if received > max_bytes:
            raise too_large(max_bytes, what="The file at the URL")
        parts.append(chunk)
    return b"".join(parts)


def fetch_url(url: str, settings: Settings) -> bytes:
    """Download the audio at ``url`` (http/https only) and return its bytes.

    See the module docstring for the address policy, redirect handling and every error
    raised. Blocking; safe to call from a gevent greenlet (sockets are monkeypatched) or
    a worker thread.
    """
    current = _validate_url(url, redirect=False)
    timeout = (settings.url_connect_timeout_s, settings.url_read_timeout_s)
    with _session(settings) as session:
        for hop in range(settings.url_max_redirects + 1):
            redirect = hop > 0
            try:
                with session.get(current, stream=True, allow_redirects=False, timeout=timeout) as response:
                    if response.is_redirect:
                        if hop == settings.url_max_redirects:
                            break
                        target = session.get_redirect_target(response) or ""
                        try:
                            joined = urljoin(response.url, target)
                        except ValueError:  # e.g. "http://[::1" as the Location
                            joined = None
                        current = _validate_url(joined, redirect=True)
                        log.debug("audio URL redirects to %s", _redacted(current))
                        continue
                    if not 200 <= response.status_code < 300:
                        log.info("audio URL %s answered HTTP %s", _redacted(current), response.status_code)
                        raise UpstreamError(
                            f"The URL's server answered with HTTP status {response.status_code}.",
                            code="upstream_status",
                        )
                    return _read_capped(response, settings.max_upload_bytes)
            except _AddressRefused:
                log.warning("audio URL %s refused: address not permitted", _redacted(current))
                raise Forbidden(
                    _FORBIDDEN_REDIRECT_MESSAGE if redirect else _FORBIDDEN_MESSAGE, code="url_forbidden"
                ) from None
            except requests.RequestException as exc:
                log.info(
                    "audio URL %s failed: %s",
                    _redacted(current),
                    " <- ".join(type(e).__name__ for e in _exception_chain(exc)),
                )
                raise _map_request_error(exc, settings, redirect=redirect) from None
            except ValueError:
                # Either this hop's URL is unusable (a host name IDNA cannot encode) or, since
                # requests parses a redirect's Location even with allow_redirects=False, the
                # Location the server sent is: only the former is the client's mistake.
                raise _invalid_url_error(redirect or _url_is_requestable(current)) from None
    raise UpstreamError(
        f"The URL redirects more than this server's limit of {settings.url_max_redirects} times.",
        code="too_many_redirects",
    )


# --------------------------------------------------------------------------- local paths


def _allowed_dir(settings: Settings) -> Path:
    if settings.local_audio_dir is None:
        raise Forbidden(
            "Local file paths are disabled on this server; set LOCAL_AUDIO_DIR to allow them.",
            code="local_paths_disabled",
        )
    try:
        base = Path(settings.local_audio_dir).resolve(strict=True)
    except (OSError, RuntimeError):
        log.error("LOCAL_AUDIO_DIR does not exist or cannot be resolved")
        base = None
    if base is None or not base.is_dir():
        raise Forbidden(
            "Local file paths are unavailable: this server's LOCAL_AUDIO_DIR is not a directory.",
            code="local_paths_disabled",
        )
    return base


def _not_found(path: str) -> NotFound:
    return NotFound(f"No readable audio file at {path!r}.", code="file_not_found")


def _outside(path: str) -> Forbidden:
    return Forbidden(f"The path {path!r} is outside the directory this server may read.", code="path_forbidden")


def resolve_local_path(path: str, settings: Settings) -> Path:
    """Resolve a client-supplied path inside ``settings.local_audio_dir``; see the module docstring."""
    base = _allowed_dir(settings)
    if not isinstance(path, str) or not path or "\x00" in path:
        raise InvalidField("The file path is empty or invalid.", code="invalid_path")
    try:
        os.fsencode(path)
    except UnicodeEncodeError:  # a lone surrogate from JSON ("\ud800") names no file
        raise InvalidField("The file path is not valid Unicode.", code="invalid_path") from None
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = base / candidate
    try:
        # Non-strict first: containment is decided before existence, so a 404 never
        # confirms that something exists outside the directory.
        resolved = candidate.resolve(strict=False)
    except (OSError, RuntimeError):  # RuntimeError: symlink loop (Python < 3.13)
        raise _not_found(path) from None
    if not resolved.is_relative_to(base):
        raise _outside(path)
    try:
        resolved = resolved.resolve(strict=True)
        info = resolved.stat()
    except (OSError, RuntimeError):
        raise _not_found(path) from None
    if not resolved.is_relative_to(base):
        raise _outside(path)
    if not stat.S_ISREG(info.st_mode):
        raise _not_found(path)
    if info.st_size > settings.max_upload_bytes:
        raise too_large(settings.max_upload_bytes, what="The file")
    return resolved


def read_local_file(path: str, settings: Settings) -> bytes:
    """Bytes of the file :func:`resolve_local_path` allows, capped at ``max_upload_bytes``."""
    resolved = resolve_local_path(path, settings)
    base = _allowed_dir(settings)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(resolved, flags)
    except PermissionError:
        raise Forbidden(f"This server may not read {path!r}.", code="path_forbidden") from None
    except OSError:
        raise _not_found(path) from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _not_found(path)
        proc_link = f"/proc/self/fd/{fd}"
        if os.path.islink(proc_link) and not Path(os.readlink(proc_link)).is_relative_to(base):
            raise _outside(path)  # a path component was swapped for a symlink after the check
        data = f.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise too_large(settings.max_upload_bytes, what="The file")
    return data


__all__ = [
    "METADATA_ADDRESSES",
    "USER_AGENT",
    "fetch_url",
    "is_address_permitted",
    "read_local_file",
    "resolve_local_path",
]
