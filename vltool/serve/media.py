"""Images named in chat requests (data URLs, http(s) URLs, allowed local files) turned into PIL images, safely.

Peers' servers were hurt here three ways; the guards:

- Images read whole before their size was checked (a vLLM CVE): a data URL's size comes from
  its base64 length before decoding; a download is refused by its Content-Length, then cut off
  once the bytes counted pass the limit; a local file by its size on disk. A decompression bomb
  is refused from its header against PIL's ``Image.MAX_IMAGE_PIXELS``, before pixels are decoded.
- Server-local paths accepted as image URLs (ms-swift): files are read only with
  ``--allowed-local-media-path``, and only inside it once symlinks are resolved.
- Internal addresses fetched for a client (SSRF): :mod:`vltool.serve.addresses`, applied to
  every redirect hop.

DNS rebinding (a name that answers a public address for the check and a private one for the
connection) is closed by connecting to the checked IP itself: the request goes to
``http(s)://<checked IP>/...`` with the original ``Host`` header, and for https the TLS server
name (SNI) and certificate check use the original host name (httpcore's ``sni_hostname``
extension). What remains: the system resolver's own time is not counted in ``fetch_timeout``;
only the first checked address is tried; environment proxies (which would connect on their
own) and ``SSL_CERT_FILE`` are ignored; a host in ``--allowed-media-domains`` may point anywhere.
"""

import base64
import io
import socket
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from PIL import Image, UnidentifiedImageError

from vltool.data.images import load_image
from vltool.errors import DatasetError
from vltool.serve.addresses import HostRefused, IPAddress, Resolver, checked_address

SHOWN_URL_CHARS = 120
REDIRECT_CODES = (301, 302, 303, 307, 308)
# besides image/*: anything else (an HTML error page, JSON) is refused before it is downloaded
BINARY_TYPES = ("application/octet-stream", "binary/octet-stream")


@dataclass(frozen=True)
class MediaPolicy:
    """What the server lets a request's image URLs do (set from ``vltool serve``'s flags).

    Attributes:
        max_image_bytes: the largest image accepted, in bytes (encoded, as sent or downloaded).
        fetch_timeout: seconds a whole http(s) fetch may take, redirects included
            (``--image-fetch-timeout``).
        allowed_domains: ``--allowed-media-domains``: if non-empty, only these hosts may be
            fetched, and they may resolve to private or loopback addresses; if empty, any host
            whose addresses are all public.
        allowed_local_path: ``--allowed-local-media-path``: local files (``file://`` URLs or
            paths) are read only from inside this folder; None refuses them all.
        max_redirects: redirects followed before giving up.
    """

    max_image_bytes: int
    fetch_timeout: float
    allowed_domains: tuple[str, ...]
    allowed_local_path: Path | None
    max_redirects: int = 3


class MediaError(Exception):
    """An image URL the server will not or cannot use; the API answers it as an error response.

    Attributes:
        message: one line that starts with the (shortened) URL and says what to do.
        status: the HTTP status for the response: 400, or 413 for an image over the size limit.
        param: the request field at fault, always ``messages``.
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = "messages"


def shorten(url: str) -> str:
    """``url`` as one-line error messages show it: control characters escaped, a long one cut (a data URL)."""
    text = "".join(char if char.isprintable() else repr(char)[1:-1] for char in url)
    if len(text) <= SHOWN_URL_CHARS:
        return text
    return f"{text[: SHOWN_URL_CHARS - 3]}... ({len(url)} characters)"


def _size(num_bytes: int) -> str:
    return f"{num_bytes} bytes" if num_bytes < 2**20 else f"{num_bytes / 2**20:.1f} MiB"


def _too_large(name: str, size: str, policy: MediaPolicy) -> MediaError:
    return MediaError(
        f"{name}: the image is {size}, more than the server's limit of {_size(policy.max_image_bytes)} per image; "
        "send a smaller image.",
        status=413,
    )


def load_image_url(url: str, policy: MediaPolicy, resolver: Resolver = socket.getaddrinfo) -> Image.Image:
    """The image an ``image_url`` part names, decoded as upright RGB, under ``policy``'s limits.

    Blocking (it may download): the server calls it from a thread pool.

    Args:
        url: a ``data:image/...;base64,...`` URL, an ``http(s)://`` URL, or a ``file://`` URL or
            path (read only with ``policy.allowed_local_path``; a relative path is taken inside it).
        policy: the server's limits.
        resolver: turns host names into addresses (``socket.getaddrinfo``'s signature); tests
            pass a stand-in.

    Raises:
        MediaError: the URL is refused, cannot be fetched, is too large (413) or is not an image.
    """
    url = url.strip()
    name = shorten(url)
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError as err:  # e.g. an unclosed IPv6 bracket
        raise MediaError(f"{name}: not a valid URL ({err}); check the URL.") from None
    if scheme == "data":
        data = _data_url_bytes(url, name, policy)
    elif scheme in ("http", "https"):
        data = _download(url, name, policy, resolver)
    elif scheme in ("file", ""):
        data = _local_file_bytes(url, name, policy)
    else:
        raise MediaError(
            f"{name}: unsupported URL scheme '{scheme}'; send a data:image/...;base64 URL or an http(s) URL."
        )
    return _decode(data, name)


def _data_url_bytes(url: str, name: str, policy: MediaPolicy) -> bytes:
    """The bytes of a base64 data URL, its size checked from the text before anything is decoded."""
    header, comma, payload = url[len("data:") :].partition(",")
    params = [param.strip().lower() for param in header.split(";")]
    if not comma or params[-1] != "base64":
        raise MediaError(
            f"{name}: the data URL is not base64-encoded ('data:image/png;base64,...'); re-encode the image."
        )
    if not params[0].startswith("image/"):
        raise MediaError(
            f"{name}: the data URL holds '{params[0] or 'text/plain'}', not an image; send an image/* one."
        )
    # 4 base64 characters carry 3 bytes; padding '=' carries none
    decoded_size = len(payload) * 3 // 4 - payload[-2:].count("=")
    if decoded_size > policy.max_image_bytes:
        raise _too_large(name, _size(decoded_size), policy)
    try:
        return base64.b64decode(payload, validate=True)
    except ValueError as err:  # binascii.Error, or non-ASCII text
        raise MediaError(
            f"{name}: bad base64 in the data URL ({err}); encode the image with standard base64 (RFC 4648, padded)."
        ) from None


def _download(url: str, name: str, policy: MediaPolicy, resolver: Resolver) -> bytes:
    """Fetch an http(s) URL: every hop checked and pinned to its checked address, size and time bounded."""
    deadline = time.monotonic() + policy.fetch_timeout
    hop_name = name
    with httpx.Client(trust_env=False, follow_redirects=False) as client:
        for _ in range(policy.max_redirects + 1):
            target = _http_url(url, hop_name)
            address = _checked(target, hop_name, policy, resolver)
            if (remaining := deadline - time.monotonic()) <= 0:
                raise _timed_out(hop_name, policy)
            request = pinned_request(client, target, address, remaining)
            try:
                response = client.send(request, stream=True)
                try:
                    if response.status_code not in REDIRECT_CODES:
                        return _read_body(response, hop_name, policy, deadline)
                    location = response.headers.get("location")
                finally:
                    response.close()
            except httpx.TimeoutException:
                raise _timed_out(hop_name, policy) from None
            except httpx.HTTPError as err:
                raise MediaError(f"{hop_name}: cannot download the image ({err}); check the URL.") from None
            if not location:
                raise MediaError(f"{hop_name}: a redirect without a Location header; link the image itself.")
            url = str(target.join(location))
            hop_name = f"{name} (redirected to {shorten(url)})"
    raise MediaError(f"{name}: more than {policy.max_redirects} redirects; link the image's final address instead.")


def _http_url(url: str, name: str) -> httpx.URL:
    try:
        target = httpx.URL(url)
    except httpx.InvalidURL as err:
        raise MediaError(f"{name}: not a valid URL ({err}); check the URL.") from None
    if target.scheme not in ("http", "https"):
        raise MediaError(f"{name}: redirects to a '{target.scheme}' URL; only http(s) redirects are followed.")
    if not target.host:
        raise MediaError(f"{name}: the URL names no host; check the URL.")
    return target


def _checked(target: httpx.URL, name: str, policy: MediaPolicy, resolver: Resolver) -> IPAddress:
    host = target.raw_host.decode("ascii")
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        return checked_address(host, port, policy.allowed_domains, resolver)
    except HostRefused as err:
        raise MediaError(f"{name} {err}") from None
    except OSError as err:
        raise MediaError(f"{name}: cannot resolve host {host} ({err}); check the URL.") from None


def pinned_request(client: httpx.Client, target: httpx.URL, address: IPAddress, timeout: float) -> httpx.Request:
    """A GET for ``target`` that connects to ``address`` only, so a second DNS answer cannot redirect it.

    The URL carries the IP address; the ``Host`` header and, for https, the TLS server name and
    certificate check keep the original host name.
    """
    extensions = {"sni_hostname": target.raw_host.decode("ascii")} if target.scheme == "https" else {}
    return client.build_request(
        "GET",
        target.copy_with(host=str(address)),
        # identity: a compressed response could expand far past the limit in one decoded chunk
        headers={"Host": target.netloc.decode("ascii"), "Accept": "image/*", "Accept-Encoding": "identity"},
        timeout=httpx.Timeout(timeout),
        extensions=extensions,
    )


def _read_body(response: httpx.Response, name: str, policy: MediaPolicy, deadline: float) -> bytes:
    """The body of a final (non-redirect) response, refused as early as its headers allow.

    Each socket read waits at most the time that was left when the hop began, and the deadline
    is checked between chunks, so a server that trickles bytes is cut off at ``fetch_timeout``
    and one that stalls mid-body after at most one more read wait.
    """
    if not response.is_success:
        raise MediaError(
            f"{name}: the image server answered HTTP {response.status_code} {response.reason_phrase}; check the URL."
        )
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type and not content_type.startswith("image/") and content_type not in BINARY_TYPES:
        raise MediaError(f"{name}: the server sent '{content_type}', not an image; link the image file itself.")
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise MediaError(f"{name}: the server sent the image {encoding}-compressed; serve it uncompressed.")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > policy.max_image_bytes:
        raise _too_large(name, _size(int(declared)), policy)
    chunks, received = [], 0
    for chunk in response.iter_raw():
        received += len(chunk)
        if received > policy.max_image_bytes:
            raise _too_large(name, f"over {_size(policy.max_image_bytes)} (download stopped)", policy)
        if time.monotonic() > deadline:
            raise _timed_out(name, policy)
        chunks.append(chunk)
    return b"".join(chunks)


def _timed_out(name: str, policy: MediaPolicy) -> MediaError:
    return MediaError(
        f"{name}: the download took longer than {policy.fetch_timeout:g} s (--image-fetch-timeout); "
        "send the image as a data URL or from a faster host."
    )


def _local_file_bytes(url: str, name: str, policy: MediaPolicy) -> bytes:
    """A local file's bytes, only from inside ``allowed_local_path`` once symlinks are resolved.

    Outside paths get the same answer whether they exist or not, so a client learns nothing about
    the server's files. The check and the open are two steps: someone able to swap a symlink
    inside the allowed folder between them could still escape it, so that folder must be
    writable only by people trusted with the server's files.
    """
    if policy.allowed_local_path is None:
        raise MediaError(
            f"{name}: local files are refused; send a data URL or an http(s) URL "
            "(the server's operator can allow a folder with --allowed-local-media-path)."
        )
    parts = urlsplit(url)
    if parts.scheme and parts.netloc not in ("", "localhost"):
        raise MediaError(f"{name}: a file URL on host '{parts.netloc}'; use file:///path for a file on the server.")
    path = urllib.request.url2pathname(parts.path) if parts.scheme else url
    root = policy.allowed_local_path.resolve()
    outside = MediaError(
        f"{name}: not inside the folder the server reads local images from (--allowed-local-media-path); "
        "send the image as a data URL."
    )
    try:
        real = (root / path).resolve()
        if not real.is_relative_to(root):
            raise outside
        if not real.is_file():
            raise MediaError(f"{name}: no such file in the allowed folder; check the path.")
        if (size := real.stat().st_size) > policy.max_image_bytes:
            raise _too_large(name, _size(size), policy)
        with real.open("rb") as file:
            data = file.read(policy.max_image_bytes + 1)  # the file may have grown since stat
    except (OSError, ValueError, RuntimeError) as err:  # unreadable, a NUL in the path, a symlink loop
        raise MediaError(f"{name}: cannot read the file ({err}); check the path.") from None
    if len(data) > policy.max_image_bytes:
        raise _too_large(name, f"over {_size(policy.max_image_bytes)}", policy)
    return data


def _decode(data: bytes, name: str) -> Image.Image:
    """Decode with vltool's loader once the header shows a size PIL's bomb limit allows.

    PIL only warns between ``MAX_IMAGE_PIXELS`` and twice that, and raises above; the server
    refuses both, read from the header alone, without changing the limit for the process.
    """
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
    except Image.DecompressionBombError:
        width = height = None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        width = height = 0  # not an image: load_image below says so in vltool's words
    if limit is not None and (width is None or width * height > limit):
        shown = "" if width is None else f" ({width}x{height})"
        raise MediaError(
            f"{name}: the image has too many pixels{shown}, more than {limit} (a decompression bomb?); "
            "send a smaller image."
        )
    try:
        return load_image(io.BytesIO(data), name=name)
    except DatasetError as err:
        raise MediaError(str(err)) from None
