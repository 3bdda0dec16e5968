"""Image URLs for `vltool serve`: limits before decoding, SSRF rules on a stand-in resolver, a real local server.

All traffic goes to a ``http.server`` on 127.0.0.1; other addresses are only ever handed to the
decision functions by a stand-in resolver, never connected to.
"""

import base64
import io
import ipaddress
import socket
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from PIL import Image

from vltool.serve.addresses import HostRefused, checked_address, non_public_kind
from vltool.serve.media import MediaError, MediaPolicy, load_image_url, pinned_request, shorten

BIG_STREAM_BYTES = 64 * 2**20


def png_bytes(size=(8, 6), colour=(200, 10, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = png_bytes()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def policy(**overrides) -> MediaPolicy:
    settings = dict(max_image_bytes=100_000, fetch_timeout=5.0, allowed_domains=("127.0.0.1",), allowed_local_path=None)
    return MediaPolicy(**{**settings, **overrides})


def fake_resolver(answers: dict[str, list[str]], calls: list[str] | None = None):
    """getaddrinfo's shape, answering from ``answers``; records the names asked for."""

    def resolve(host, port, type=0, **_):
        if calls is not None:
            calls.append(host)
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, type, 6, "", (ip, port)) for ip in answers[host]]

    return resolve


def media_error(url: str, media_policy: MediaPolicy, **kwargs) -> MediaError:
    with pytest.raises(MediaError) as caught:
        load_image_url(url, media_policy, **kwargs)
    assert "\n" not in caught.value.message and caught.value.param == "messages"
    return caught.value


# --- the local image server ------------------------------------------------------------------


class ImageHandler(BaseHTTPRequestHandler):
    """Routes for every download case; ``seen`` records (path, Host header) of each request."""

    seen: list[tuple[str, str]] = []
    big_stream_sent: list[int] = []
    big_stream_done = threading.Event()

    def log_message(self, *args) -> None:
        pass

    def send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up first (the timeout test)

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Host", "")))
        path = self.path
        if path == "/img.png":
            self.send(200, PNG, {"Content-Type": "image/png", "Content-Length": str(len(PNG))})
        elif path.startswith("/redirect/"):
            left = int(path.rsplit("/", 1)[1])
            self.send(302, headers={"Location": "/img.png" if left == 0 else f"/redirect/{left - 1}"})
        elif path == "/away":
            self.send(302, headers={"Location": "http://internal.test/secret"})
        elif path == "/to-file":
            self.send(302, headers={"Location": "file:///etc/passwd"})
        elif path == "/declared-big":
            self.send(200, b"\x89PNG", {"Content-Type": "image/png", "Content-Length": "10000000"})
        elif path == "/big-stream":
            self.stream_big()
        elif path == "/page.html":
            self.send(200, b"<html>login</html>", {"Content-Type": "text/html; charset=utf-8"})
        elif path == "/gzip":
            body = zlib.compress(PNG)
            self.send(200, body, {"Content-Type": "image/png", "Content-Encoding": "gzip"})
        elif path == "/slow":
            time.sleep(2.0)
            self.send(200, PNG, {"Content-Type": "image/png"})
        elif path == "/trickle":
            self.trickle()
        else:
            self.send(404, b"not found", {"Content-Type": "text/plain"})

    def stream_big(self) -> None:
        """64 MiB without a Content-Length, counting what the client let through before it hung up."""
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        sent, chunk = 0, b"\0" * 65536
        try:
            while sent < BIG_STREAM_BYTES:
                self.wfile.write(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.big_stream_sent.append(sent)
        self.big_stream_done.set()

    def trickle(self) -> None:
        """A byte every 0.1 s: each read is quick, only a whole-fetch deadline stops it."""
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        try:
            for byte in PNG[:30]:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ImageHandler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def fresh_log():
    ImageHandler.seen.clear()


# --- http(s) ---------------------------------------------------------------------------------


def test_fetches_png_from_allowed_host(server):
    image = load_image_url(f"{server}/img.png", policy())
    assert image.mode == "RGB" and image.size == (8, 6) and image.getpixel((3, 3)) == (200, 10, 10)


def test_connects_to_the_checked_address_with_the_original_host_header(server):
    """A name the system cannot resolve (.test) works only if the connection uses the resolver's answer."""
    port = server.rsplit(":", 1)[1]
    calls = []
    resolver = fake_resolver({"media.test": ["127.0.0.1"]}, calls)
    image = load_image_url(f"http://media.test:{port}/img.png", policy(allowed_domains=("media.test",)), resolver)
    assert image.size == (8, 6)
    assert ImageHandler.seen == [("/img.png", f"media.test:{port}")]
    assert calls == ["media.test"]  # resolved once, then connected to that answer


def test_https_request_keeps_the_host_name_for_tls_while_connecting_to_the_ip():
    """Built only, never sent: the URL carries the checked IP, SNI and Host the name."""
    with httpx.Client() as client:
        target = httpx.URL("https://images.example.com:8443/cat.png?x=1")
        request = pinned_request(client, target, checked_address_of("93.184.216.34"), timeout=3.0)
    assert str(request.url) == "https://93.184.216.34:8443/cat.png?x=1"
    assert request.headers["Host"] == "images.example.com:8443"
    assert request.extensions["sni_hostname"] == "images.example.com"
    assert request.headers["Accept-Encoding"] == "identity"


def checked_address_of(ip: str):
    return checked_address("images.example.com", 443, (), fake_resolver({"images.example.com": [ip]}))


def test_loopback_refused_without_allowed_domains_and_never_contacted(server):
    error = media_error(f"{server}/img.png", policy(allowed_domains=()))
    assert error.status == 400
    assert error.message == (
        f"{server}/img.png resolves to a loopback address (127.0.0.1); "
        "the server refuses it unless --allowed-media-domains names 127.0.0.1."
    )
    assert ImageHandler.seen == []


def test_localhost_through_the_real_resolver_is_refused(server):
    port = server.rsplit(":", 1)[1]
    error = media_error(f"http://localhost:{port}/img.png", policy(allowed_domains=()))
    assert "resolves to a loopback address" in error.message and "names localhost" in error.message
    assert ImageHandler.seen == []


def test_redirects_followed_up_to_the_cap(server):
    image = load_image_url(f"{server}/redirect/2", policy(max_redirects=3))
    assert image.size == (8, 6)
    assert [path for path, _ in ImageHandler.seen] == ["/redirect/2", "/redirect/1", "/redirect/0", "/img.png"]


def test_redirect_chain_longer_than_the_cap(server):
    error = media_error(f"{server}/redirect/3", policy(max_redirects=3))
    assert error.message == f"{server}/redirect/3: more than 3 redirects; link the image's final address instead."
    assert (
        len(ImageHandler.seen) == 4 and ("/img.png", f"127.0.0.1:{server.rsplit(':', 1)[1]}") not in ImageHandler.seen
    )


def test_redirect_to_a_host_outside_the_allowed_list_is_refused_before_resolving(server):
    calls = []
    resolver = fake_resolver({"127.0.0.1": ["127.0.0.1"], "internal.test": ["10.0.0.1"]}, calls)
    error = media_error(f"{server}/away", policy(), resolver=resolver)
    assert error.message == (
        f"{server}/away (redirected to http://internal.test/secret) names host internal.test, which is not in "
        "the server's --allowed-media-domains; send the image as a data URL instead."
    )
    assert calls == ["127.0.0.1"]


def test_redirect_to_a_file_url_is_refused(server):
    error = media_error(f"{server}/to-file", policy(allowed_local_path=Path("/")))
    assert "redirects to a 'file' URL; only http(s) redirects are followed" in error.message


def test_declared_length_over_the_limit_is_refused_from_the_header(server):
    error = media_error(f"{server}/declared-big", policy())
    assert error.status == 413
    assert error.message == (
        f"{server}/declared-big: the image is 9.5 MiB, more than the server's limit of 100000 bytes per image; "
        "send a smaller image."
    )


def test_download_without_length_is_cut_off_at_the_limit(server):
    ImageHandler.big_stream_done.clear()
    error = media_error(f"{server}/big-stream", policy())
    assert error.status == 413 and "over 100000 bytes (download stopped)" in error.message
    assert ImageHandler.big_stream_done.wait(10)
    # the client hung up: the server could not push the whole 64 MiB (socket buffers hold a few MiB at most)
    assert ImageHandler.big_stream_sent[-1] < BIG_STREAM_BYTES // 2


def test_wrong_content_type_is_refused(server):
    error = media_error(f"{server}/page.html", policy())
    assert (
        error.message == f"{server}/page.html: the server sent 'text/html', not an image; link the image file itself."
    )


def test_compressed_response_is_refused(server):
    assert "gzip-compressed; serve it uncompressed" in media_error(f"{server}/gzip", policy()).message


def test_http_error_status(server):
    error = media_error(f"{server}/missing.png", policy())
    assert error.message == f"{server}/missing.png: the image server answered HTTP 404 Not Found; check the URL."


def test_server_that_does_not_answer_times_out(server):
    start = time.monotonic()
    error = media_error(f"{server}/slow", policy(fetch_timeout=0.5))
    assert time.monotonic() - start < 1.8  # the server answers only after 2 s
    assert "took longer than 0.5 s (--image-fetch-timeout)" in error.message


def test_trickling_server_is_cut_off_at_the_whole_fetch_deadline(server):
    start = time.monotonic()
    error = media_error(f"{server}/trickle", policy(fetch_timeout=0.6))
    assert time.monotonic() - start < 2.5  # the body alone takes 3 s, each byte within 0.1 s
    assert "took longer than 0.6 s" in error.message


# --- address rules, on a stand-in resolver -----------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "kind"),
    [
        ("10.0.0.1", "private"),
        ("192.168.1.20", "private"),
        ("169.254.169.254", "link-local"),
        ("100.100.100.200", "non-public"),
        ("127.0.0.1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("fd00::1", "private"),
        ("fe80::1", "link-local"),
        ("ff02::1", "multicast"),
        ("::", "unspecified"),
        ("64:ff9b::7f00:1", "loopback"),
        ("2002:a00:1::", "private"),
        ("93.184.216.34", None),
        ("::ffff:93.184.216.34", None),
        ("2606:2800:220:1:248:1893:25c8:1946", None),
    ],
)
def test_address_kinds(ip, kind):
    resolver = fake_resolver({"host.test": [ip]})
    if kind is None:
        assert checked_address("host.test", 80, (), resolver) == ipaddress.ip_address(ip)
    else:
        with pytest.raises(HostRefused, match=rf"resolves to a {kind} address \({ip}\);"):
            checked_address("host.test", 80, (), resolver)


def test_one_private_answer_among_public_ones_is_refused():
    resolver = fake_resolver({"mixed.test": ["93.184.216.34", "10.0.0.1"]})
    with pytest.raises(HostRefused, match=r"private address \(10\.0\.0\.1\)"):
        checked_address("mixed.test", 443, (), resolver)


def test_allowed_domain_may_be_private_and_others_are_not_even_resolved():
    calls = []
    resolver = fake_resolver({"Intranet.Test.": ["10.0.0.1"], "93.184.216.34": ["93.184.216.34"]}, calls)
    assert str(checked_address("Intranet.Test.", 80, ("intranet.test",), resolver)) == "10.0.0.1"
    with pytest.raises(HostRefused, match="not in the server's --allowed-media-domains"):
        checked_address("93.184.216.34", 80, ("intranet.test",), resolver)
    assert calls == ["Intranet.Test."]


def test_non_public_kind_is_the_decision_function():
    assert non_public_kind(checked_address_of("93.184.216.34")) is None


@pytest.mark.parametrize(
    ("ip", "kind"),
    [("10.0.0.1", "private"), ("169.254.169.254", "link-local"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback")],
)
def test_refused_addresses_through_load_image_url(ip, kind):
    resolver = fake_resolver({"metadata.test": [ip]})
    error = media_error("http://metadata.test/latest/x.png", policy(allowed_domains=()), resolver=resolver)
    assert error.status == 400
    assert error.message == (
        f"http://metadata.test/latest/x.png resolves to a {kind} address ({ip}); "
        "the server refuses it unless --allowed-media-domains names metadata.test."
    )


def test_unresolvable_host():
    error = media_error("http://nowhere.test/x.png", policy(allowed_domains=()), resolver=fake_resolver({}))
    assert error.message.startswith("http://nowhere.test/x.png: cannot resolve host nowhere.test (")


# --- data URLs ---------------------------------------------------------------------------------


def test_data_url_png():
    image = load_image_url(data_url(png_bytes((5, 7), (1, 2, 3))), policy())
    assert image.size == (5, 7) and image.getpixel((0, 0)) == (1, 2, 3)


def test_data_url_jpeg_is_turned_upright_by_exif():
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
    Image.new("RGB", (4, 2), (0, 128, 255)).save(buffer, format="JPEG", exif=exif)
    assert load_image_url(data_url(buffer.getvalue(), "image/jpeg"), policy()).size == (2, 4)


def test_data_url_size_is_checked_before_decoding():
    """Not even valid base64: the 413 proves nothing was decoded."""
    url = "data:image/png;base64," + "!" * 200_000
    error = media_error(url, policy(max_image_bytes=100_000))
    assert error.status == 413
    assert error.message == (
        f"{url[:117]}... ({len(url)} characters): the image is 150000 bytes, more than the server's limit of "
        "100000 bytes per image; send a smaller image."
    )


def test_data_url_just_under_the_limit_passes():
    data = PNG + b"\0" * (1000 - len(PNG))
    assert load_image_url(data_url(data), policy(max_image_bytes=1000)).size == (8, 6)
    assert media_error(data_url(data + b"\0"), policy(max_image_bytes=1000)).status == 413


@pytest.mark.parametrize("payload", ["iVBORw0KGgo$AAAA", "iVBORw0KGgoAAA", "iVBO\nRw0KGgoA", "iVBORw0KGgoé"])
def test_bad_base64(payload):
    error = media_error(f"data:image/png;base64,{payload}", policy())
    assert error.status == 400
    assert error.message.startswith(f"{shorten(f'data:image/png;base64,{payload}')}: bad base64 in the data URL (")
    assert error.message.endswith("encode the image with standard base64 (RFC 4648, padded).")


def test_data_url_not_base64_or_not_an_image():
    assert "is not base64" in media_error("data:image/png,rawbytes", policy()).message
    assert "holds 'text/plain', not an image" in media_error(data_url(PNG, "text/plain"), policy()).message


def test_undecodable_image_uses_vltools_message():
    url = data_url(b"this is not an image at all")
    assert (
        media_error(url, policy()).message == f"{url}: cannot decode image (not an image); replace or remove the file."
    )


def bomb_png(width: int, height: int) -> bytes:
    """A PNG header declaring ``width`` x ``height`` pixels, with no pixel data behind it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_decompression_bomb_over_the_limit_is_refused_from_its_header():
    url = data_url(bomb_png(10_000, 10_000))  # 100 M pixels: PIL only warns (limit 89.5 M)
    with pytest.warns(Image.DecompressionBombWarning):
        error = media_error(url, policy())
    assert error.status == 400
    assert f"the image has too many pixels (10000x10000), more than {Image.MAX_IMAGE_PIXELS}" in error.message


def test_decompression_bomb_far_over_the_limit_is_refused():
    error = media_error(data_url(bomb_png(100_000, 100_000)), policy())
    assert f"the image has too many pixels, more than {Image.MAX_IMAGE_PIXELS} (a decompression bomb?)" in error.message


# --- local files -----------------------------------------------------------------------------------


@pytest.fixture
def folders(tmp_path):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "cat.png").write_bytes(PNG)
    (outside / "secret.png").write_bytes(PNG)
    (allowed / "escape.png").symlink_to(outside / "secret.png")
    return allowed, outside


def test_local_files_refused_without_an_allowed_folder(folders):
    allowed, _ = folders
    for url in (f"file://{allowed}/cat.png", str(allowed / "cat.png")):
        error = media_error(url, policy())
        assert error.message == (
            f"{shorten(url)}: local files are refused; send a data URL or an http(s) URL "
            "(the server's operator can allow a folder with --allowed-local-media-path)."
        )


def test_local_file_inside_the_allowed_folder(folders):
    allowed, _ = folders
    local = policy(allowed_local_path=allowed)
    for url in (f"file://{allowed}/cat.png", f"file://localhost{allowed}/cat.png", str(allowed / "cat.png"), "cat.png"):
        assert load_image_url(url, local).size == (8, 6)


def test_local_files_outside_the_folder_are_refused_alike(folders):
    """A symlink out, a ../ path, an existing and a missing file: one answer, revealing nothing."""
    allowed, outside = folders
    local = policy(allowed_local_path=allowed)
    urls = [f"file://{allowed}/escape.png", f"file://{allowed}/../outside/secret.png", str(outside / "nope.png")]
    for url in urls:
        assert media_error(url, local).message == (
            f"{shorten(url)}: not inside the folder the server reads local images from (--allowed-local-media-path); "
            "send the image as a data URL."
        )


def test_local_file_missing_or_too_large_or_on_another_host(folders):
    allowed, _ = folders
    (allowed / "large.png").write_bytes(PNG + b"\0" * 2000)
    local = policy(allowed_local_path=allowed, max_image_bytes=1000)
    assert "no such file in the allowed folder" in media_error(f"file://{allowed}/gone.png", local).message
    assert media_error(f"file://{allowed}/large.png", local).status == 413
    assert "a file URL on host 'fileserver'" in media_error("file://fileserver/share/cat.png", local).message


def test_other_schemes_are_refused():
    error = media_error("ftp://127.0.0.1/cat.png", policy())
    assert error.message == (
        "ftp://127.0.0.1/cat.png: unsupported URL scheme 'ftp'; send a data:image/...;base64 URL or an http(s) URL."
    )
