"""Server-side fetch of `url` images: scheme and address rules, timeouts, byte and redirect caps."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from app.errors import ImageLoadError
from app.settings import UrlPolicy

Resolver = Callable[[str, int], list[str]]
_CHUNK = 64 * 1024


def is_http_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def is_public_address(address: str) -> bool:
    """True only for globally routable unicast addresses (IPv4-mapped IPv6 unwrapped)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host_matches(host: str, patterns: tuple[str, ...]) -> bool:
    host = host.lower().rstrip(".")
    return any(host == p or host.endswith("." + p) for p in (q.lower().strip(".") for q in patterns))


def check_url(url: str, policy: UrlPolicy, resolver: Resolver = system_resolver) -> None:
    """Refuse a URL the policy forbids; a pure check but for the DNS lookup."""
    if not policy.enabled:
        raise ImageLoadError("URL inputs are disabled on this server (PE_SEARCH_URL_INPUT_ENABLED)")
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
        if host:
            host.encode("idna")
    except (ValueError, UnicodeError):
        raise ImageLoadError("the URL is malformed") from None
    if parts.scheme not in ("http", "https"):
        raise ImageLoadError(f"only http and https URLs are accepted, not {parts.scheme or 'no scheme'!r}")
    if parts.scheme == "http" and not policy.allow_http:
        raise ImageLoadError("plain http URLs are refused; use https (or set PE_SEARCH_URL_ALLOW_HTTP=true)")
    if not host:
        raise ImageLoadError("the URL has no host")
    if host_matches(host, policy.deny_hosts):
        raise ImageLoadError(f"the host {host!r} is on this server's deny-list")
    if policy.allow_hosts and not host_matches(host, policy.allow_hosts):
        raise ImageLoadError(f"the host {host!r} is not on this server's allow-list")
    if _is_ip_literal(host) and not policy.allow_ip_hosts:
        raise ImageLoadError("URLs with a bare IP address as host are refused (PE_SEARCH_URL_ALLOW_IP_HOSTS)")
    if policy.allow_private_hosts:
        return
    try:
        addresses = resolver(host, port or (443 if parts.scheme == "https" else 80))
    except (OSError, UnicodeError) as exc:
        raise ImageLoadError(f"the URL's host {host!r} could not be resolved") from exc
    if not addresses or not all(is_public_address(a) for a in addresses):
        raise ImageLoadError(
            f"the URL's host {host!r} resolves to a private, loopback or reserved address, which is refused"
        )


class NonPublicPeerError(OSError):
    """The socket connected to a non-public address, whatever DNS said before (rebinding)."""


def _check_peer(sock: socket.socket) -> None:
    address = sock.getpeername()[0]
    if not is_public_address(address):
        sock.close()
        raise NonPublicPeerError(f"the connection went to a non-public address ({address}), which is refused")


class _CheckedHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _check_peer(sock)
        return sock


class _CheckedHTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _check_peer(sock)
        return sock


class _CheckedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _CheckedHTTPConnection


class _CheckedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _CheckedHTTPSConnection


class PublicPeersOnly(HTTPAdapter):
    """Checks the address each connection actually reached, before a byte of the request is sent."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _CheckedHTTPPool, "https": _CheckedHTTPSPool}


def _refusal_in(exc: BaseException) -> NonPublicPeerError | None:
    """urllib3 and requests wrap the peer refusal a few levels deep; find it."""
    pending, seen = [exc], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, NonPublicPeerError):
            return current
        pending += [a for a in getattr(current, "args", ()) if isinstance(a, BaseException)]
        pending += [e for e in (current.__cause__, current.__context__, getattr(current, "reason", None)) if e]
    return None


def _socket_of(response: requests.Response) -> socket.socket | None:
    # urllib3 hands the socket to http.client's response: HTTPResponse -> BufferedReader -> SocketIO.
    reader = getattr(getattr(response.raw, "_fp", None), "fp", None)
    return getattr(getattr(reader, "raw", None), "_sock", None)


def _shutdown(response: requests.Response) -> None:
    sock = _socket_of(response)
    try:
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    response.close()


class UrlFetcher:
    """Fetches image bytes with every hop checked against the policy."""

    def __init__(self, policy: UrlPolicy, resolver: Resolver = system_resolver, *, check_peers: bool = True) -> None:
        self.policy = policy
        self.resolver = resolver
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "pe-search"
        if check_peers and not policy.allow_private_hosts:
            # Direct connections only: through a proxy, the peer checked would be the proxy.
            self.session.trust_env = False
            for scheme in ("http://", "https://"):
                self.session.mount(scheme, PublicPeersOnly())

    def fetch(self, url: str) -> bytes:
        deadline = time.monotonic() + self.policy.connect_timeout + self.policy.read_timeout
        for _ in range(self.policy.max_redirects + 1):
            check_url(url, self.policy, self.resolver)
            try:
                response = self.session.get(
                    url,
                    stream=True,
                    allow_redirects=False,
                    timeout=(self.policy.connect_timeout, self.policy.read_timeout),
                )
            except (requests.RequestException, ValueError, UnicodeError) as exc:
                refusal = _refusal_in(exc)
                if refusal is not None:
                    raise ImageLoadError(str(refusal)) from exc
                raise ImageLoadError(f"the URL could not be fetched ({type(exc).__name__})") from exc
            with response:
                if response.is_redirect:
                    url = urljoin(url, response.headers.get("Location", ""))
                    continue
                if response.status_code != 200:
                    raise ImageLoadError(f"the URL answered HTTP {response.status_code}")
                return self._read_capped(response, deadline)
        raise ImageLoadError(f"the URL redirected more than {self.policy.max_redirects} times")

    def _read_capped(self, response: requests.Response, deadline: float) -> bytes:
        limit = self.policy.max_bytes
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ImageLoadError(f"the image at the URL is larger than {limit} bytes")
        # A server dripping bytes would keep each read under the read timeout forever: at the
        # deadline a timer shuts the socket down, which wakes the read blocked on it.
        watchdog = threading.Timer(max(deadline - time.monotonic(), 0.0), _shutdown, [response])
        watchdog.start()
        body = bytearray()
        try:
            for chunk in response.iter_content(_CHUNK):
                body += chunk
                if len(body) > limit:
                    raise ImageLoadError(f"the image at the URL is larger than {limit} bytes")
        except (requests.RequestException, OSError, ValueError, AttributeError) as exc:
            if time.monotonic() >= deadline:
                raise ImageLoadError("fetching the URL took too long") from exc
            raise ImageLoadError(f"the URL could not be read ({type(exc).__name__})") from exc
        finally:
            watchdog.cancel()
        if time.monotonic() >= deadline:
            raise ImageLoadError("fetching the URL took too long")
        return bytes(body)
