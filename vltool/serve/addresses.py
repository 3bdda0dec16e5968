"""Which hosts and addresses `vltool serve` may fetch images from (the server-side request forgery rules).

A client that names an image URL makes the server open a connection, so without these rules
anyone who can reach the API can read the cloud metadata service (169.254.169.254,
100.100.100.200), an admin page on localhost or a database on the private network through it.
The rules are kept apart from the fetching so they are tested on a stand-in resolver without
connecting anywhere.

- With ``--allowed-media-domains``, only the hosts it names (exact, case-insensitive, no
  subdomains) are fetched, at whatever address they resolve to: the operator vouched for them.
- Without it, any host whose every resolved address is public: one private answer among public
  ones is refused too, since the connection could be made to either.
"""

import ipaddress
import socket
from collections.abc import Callable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[..., list[tuple]]
"""``socket.getaddrinfo``'s signature: ``(host, port, type=...) -> [(family, type, proto, canonname, sockaddr)]``."""

# Prefixes that carry an IPv4 address in their last 32 bits and reach it through a translator:
# the NAT64 well-known prefix (RFC 6052) and its local-use sibling (RFC 8215). Python counts the
# first as global, so 64:ff9b::7f00:1 would otherwise pass as a public address while a NAT64
# gateway forwards it to 127.0.0.1.
NAT64_PREFIXES = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))


class HostRefused(Exception):
    """The server must not fetch from this host; the message continues a sentence that starts with the URL."""


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (IPv4-mapped, 6to4 or NAT64), else None."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in prefix for prefix in NAT64_PREFIXES):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def non_public_kind(address: IPAddress) -> str | None:
    """What kind of non-public address ``address`` is ("loopback", "private", ...); None for a public one.

    An IPv6 address that carries an IPv4 one is judged by the IPv4 address too, because that is
    where a connection to it ends up (::ffff:127.0.0.1 is the loopback interface).
    """
    inner = embedded_ipv4(address)
    if inner is not None and (kind := non_public_kind(inner)) is not None:
        return kind
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return None  # a mapped public IPv4 address is that public address
    kinds = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),  # before private: Python counts 240.0.0.0/4 as both
        ("private", address.is_private),
        # not flagged above yet not global: shared address space (100.64.0.0/10, where some
        # clouds put their metadata service) and other special-purpose blocks
        ("non-public", not address.is_global),
    )
    return next((kind for kind, flagged in kinds if flagged), None)


def shown(address: IPAddress) -> str:
    """``address`` as messages show it: an IPv4-mapped one with its IPv4 part dotted (::ffff:127.0.0.1)."""
    mapped = getattr(address, "ipv4_mapped", None)
    return f"::ffff:{mapped}" if mapped is not None else str(address)


def host_listed(host: str, allowed_domains: tuple[str, ...]) -> bool:
    """Whether ``host`` is one of ``allowed_domains`` (case, a trailing dot and IPv6 brackets ignored)."""

    def norm(name: str) -> str:
        return name.strip().strip("[]").rstrip(".").lower()

    return norm(host) in {norm(domain) for domain in allowed_domains}


def resolve(host: str, port: int, resolver: Resolver = socket.getaddrinfo) -> list[IPAddress]:
    """Every address ``host`` resolves to for a TCP connection, in the resolver's order, without repeats.

    Raises:
        OSError: the name cannot be resolved (``socket.gaierror``).
    """
    infos = resolver(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))


def checked_address(
    host: str, port: int, allowed_domains: tuple[str, ...], resolver: Resolver = socket.getaddrinfo
) -> IPAddress:
    """The address to connect to for ``host``, after the rules above; the caller must connect to it and no other.

    A host outside a non-empty ``allowed_domains`` is refused before it is resolved, so a refused
    name is not even looked up.

    Raises:
        HostRefused: the rules forbid this host or one of its addresses.
        OSError: the name cannot be resolved.
    """
    listed = host_listed(host, allowed_domains)
    if allowed_domains and not listed:
        raise HostRefused(
            f"names host {host}, which is not in the server's --allowed-media-domains; "
            "send the image as a data URL instead."
        )
    addresses = resolve(host, port, resolver)
    if not addresses:
        raise HostRefused(f"names host {host}, which resolves to no address; check the URL.")
    if not listed:
        for address in addresses:
            if (kind := non_public_kind(address)) is not None:
                raise HostRefused(
                    f"resolves to a {kind} address ({shown(address)}); "
                    f"the server refuses it unless --allowed-media-domains names {host}."
                )
    return addresses[0]
