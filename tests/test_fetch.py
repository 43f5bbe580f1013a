"""URL images: address rules as pure functions, and real fetches from a server on 127.0.0.1 only."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient

from app.errors import ImageLoadError
from app.media.fetch import UrlFetcher, UrlPolicy, check_url, is_public_address
from tests.support.images import encode, photo

JPEG = encode(photo(64, 48, seed=3), "JPEG")
OPEN = UrlPolicy(allow_http=True, allow_ip_hosts=True, allow_private_hosts=True, read_timeout=2.0)


class Handler(BaseHTTPRequestHandler):
    release = threading.Event()
    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        Handler.seen.append(self.path)
        path = self.path
        if path == "/cat.jpg":
            self._send(200, JPEG)
        elif path.startswith("/hop/"):
            left = int(path.rsplit("/", 1)[1])
            self.send_response(302)
            self.send_header("Location", "/cat.jpg" if left == 0 else f"/hop/{left - 1}")
            self.end_headers()
        elif path == "/to-internal":
            self.send_response(302)
            self.send_header("Location", "http://internal.example/cat.jpg")
            self.end_headers()
        elif path == "/big-declared":
            self._send(200, b"x" * 5000)
        elif path == "/big-streamed":
            # No Content-Length: the cap must hold while reading, not from the header.
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"y" * 5000)
            self.close_connection = True
        elif path == "/drip":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            for _ in range(400):
                if Handler.release.wait(0.05):
                    break
                self.wfile.write(b"d")
                self.wfile.flush()
        elif path == "/stall":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"z")
            self.wfile.flush()
            Handler.release.wait(5)
        else:
            self._send(404, b"no")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    Handler.release.set()
    httpd.shutdown()


# --- pure rules: no request is made ---


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not is_public_address(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert is_public_address(address)


def resolver_for(table: dict[str, list[str]]):
    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError("no such host")
        return table[host]

    return resolve


@pytest.mark.parametrize(
    "url,addresses,reason",
    [
        ("https://intranet.example/a.jpg", ["10.0.0.5"], "private"),
        ("https://mixed.example/a.jpg", ["93.184.216.34", "127.0.0.1"], "private"),
        ("https://metadata.example/a.jpg", ["169.254.169.254"], "private"),
        ("http://public.example/a.jpg", ["93.184.216.34"], "plain http"),
        ("https://93.184.216.34/a.jpg", [], "bare IP"),
        ("file:///etc/passwd", [], "only http and https"),
        ("https://unknown.example/a.jpg", None, "could not be resolved"),
    ],
)
def test_check_url_refusals(url: str, addresses: list[str] | None, reason: str) -> None:
    table = {} if addresses is None else {url.split("/")[2]: addresses}
    with pytest.raises(ImageLoadError, match=reason):
        check_url(url, UrlPolicy(), resolver_for(table))


def test_check_url_accepts_public_https() -> None:
    """Accepted under the default policy because its host was resolved and every address is public."""
    lookups: list[tuple[str, int]] = []
    public = resolver_for({"public.example": ["93.184.216.34", "2606:4700:4700::1111"]})

    def resolve(host: str, port: int) -> list[str]:
        lookups.append((host, port))
        return public(host, port)

    check_url("https://public.example/a.jpg", UrlPolicy(), resolve)  # accepted: no ImageLoadError
    check_url("https://public.example:8443/b.jpg?size=2", UrlPolicy(), resolve)
    # Accepted on what DNS said for the URL's own host and port, not waved through unchecked.
    assert lookups == [("public.example", 443), ("public.example", 8443)]


def test_url_input_can_be_switched_off() -> None:
    with pytest.raises(ImageLoadError, match="disabled"):
        check_url("https://public.example/a.jpg", UrlPolicy(enabled=False), resolver_for({}))


# --- real fetches, loopback only ---


def test_fetch_image(server: str) -> None:
    assert UrlFetcher(OPEN).fetch(f"{server}/cat.jpg") == JPEG


def test_redirects_are_followed_up_to_the_cap(server: str) -> None:
    fetcher = UrlFetcher(UrlPolicy(**{**OPEN.__dict__, "max_redirects": 2}))
    assert fetcher.fetch(f"{server}/hop/1") == JPEG  # two redirects
    with pytest.raises(ImageLoadError, match="redirected more than 2"):
        fetcher.fetch(f"{server}/hop/2")


def test_every_redirect_hop_is_checked(server: str) -> None:
    """The first hop passes (the resolver calls localhost public, and the connected-address check,
    tested on its own below, is off); the redirect's host is refused before it is fetched."""
    port = server.rsplit(":", 1)[1]
    policy = UrlPolicy(allow_http=True, read_timeout=2.0)
    resolver = resolver_for({"localhost": ["93.184.216.34"], "internal.example": ["10.0.0.7"]})
    with pytest.raises(ImageLoadError, match="private"):
        UrlFetcher(policy, resolver, check_peers=False).fetch(f"http://localhost:{port}/to-internal")
    assert "/to-internal" in Handler.seen


@pytest.mark.parametrize("path", ["/big-declared", "/big-streamed"])
def test_byte_cap(server: str, path: str) -> None:
    fetcher = UrlFetcher(UrlPolicy(**{**OPEN.__dict__, "max_bytes": 1000}))
    with pytest.raises(ImageLoadError, match="larger than 1000 bytes"):
        fetcher.fetch(f"{server}{path}")


def test_http_errors_and_timeouts(server: str) -> None:
    with pytest.raises(ImageLoadError, match="HTTP 404"):
        UrlFetcher(OPEN).fetch(f"{server}/missing.jpg")
    with pytest.raises(ImageLoadError, match="could not be read|took too long"):
        UrlFetcher(UrlPolicy(**{**OPEN.__dict__, "read_timeout": 0.3})).fetch(f"{server}/stall")


def test_a_dripping_server_cannot_hold_a_fetch_past_its_deadline(server: str) -> None:
    """One byte every 50 ms keeps each read under the read timeout; the total deadline still holds."""
    policy = UrlPolicy(**{**OPEN.__dict__, "connect_timeout": 0.2, "read_timeout": 0.6})
    started = time.monotonic()
    with pytest.raises(ImageLoadError, match="took too long"):
        UrlFetcher(policy).fetch(f"{server}/drip")
    assert time.monotonic() - started < 3.0


@pytest.mark.parametrize(
    "url", ["https://[::1", "https://h:99999/a.jpg", "https://a..b/a.jpg", f"https://{'x' * 70}.example/a.jpg"]
)
def test_malformed_urls_are_refused_cleanly(url: str) -> None:
    with pytest.raises(ImageLoadError):
        check_url(url, UrlPolicy(), resolver_for({}))


def test_embed_image_from_url_matches_base64(client: TestClient, server: str) -> None:
    from tests.support.images import image_object

    by_url = client.post(
        "/perception_encoder/embed_image", json={"image": {"type": "url", "value": f"{server}/cat.jpg"}}
    )
    by_b64 = client.post("/perception_encoder/embed_image", json={"image": image_object(JPEG)})
    assert by_url.status_code == 200, by_url.text
    assert by_url.json()["embeddings"] == by_b64.json()["embeddings"]
    bare = client.post(
        "/perception_encoder/compare",
        json={
            "subject": f"{server}/cat.jpg",
            "prompt": {"type": "base64", "value": image_object(JPEG)["value"]},
            "prompt_type": "image",
        },
    )
    assert bare.json()["similarity"] == [pytest.approx(1.0, abs=1e-5)]
    missing = client.post(
        "/perception_encoder/embed_image", json={"image": {"type": "url", "value": f"{server}/nope.jpg"}}
    )
    assert missing.status_code == 400 and "HTTP 404" in missing.json()["message"]


def test_connected_address_is_checked_against_dns_rebinding(server: str) -> None:
    """DNS says public (the resolver lies, as a rebinding attacker's would); the socket reaches
    127.0.0.1, and the fetch is refused before any request is sent."""
    port = server.rsplit(":", 1)[1]
    policy = UrlPolicy(allow_http=True, read_timeout=2.0)
    fetcher = UrlFetcher(policy, resolver_for({"localhost": ["93.184.216.34"]}))
    with pytest.raises(ImageLoadError, match=r"non-public address \((127\.0\.0\.1|::1)\)"):
        fetcher.fetch(f"http://localhost:{port}/cat.jpg?rebinding")
    assert "/cat.jpg?rebinding" not in Handler.seen


@pytest.mark.parametrize(
    "url,allow,deny,refused",
    [
        ("https://img.example.com/a.jpg", ("example.com",), (), None),
        ("https://example.com/a.jpg", ("example.com",), (), None),
        ("https://badexample.com/a.jpg", ("example.com",), (), "allow-list"),
        ("https://other.org/a.jpg", ("example.com",), (), "allow-list"),
        ("https://cdn.tracker.net/a.jpg", (), ("tracker.net",), "deny-list"),
        ("https://x.example.com/a.jpg", ("example.com",), ("x.example.com",), "deny-list"),
    ],
)
def test_host_allow_and_deny_lists(url: str, allow: tuple, deny: tuple, refused: str | None) -> None:
    resolver = resolver_for({url.split("/")[2]: ["93.184.216.34"]})
    policy = UrlPolicy(allow_hosts=allow, deny_hosts=deny)
    if refused is None:
        check_url(url, policy, resolver)
    else:
        with pytest.raises(ImageLoadError, match=refused):
            check_url(url, policy, resolver)


def test_settings_build_the_lists() -> None:
    from app.settings import Settings

    policy = Settings(url_allow_hosts="example.com, cdn.org", url_deny_hosts="bad.example.com").url_policy()
    assert policy.allow_hosts == ("example.com", "cdn.org") and policy.deny_hosts == ("bad.example.com",)
