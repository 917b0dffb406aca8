"""One webhook attempt that the receiver cannot turn against the sender.

- The destination is checked when sending: the host is resolved and every address must be global
  (no loopback, private, link-local/metadata, shared, multicast or reserved address) unless the
  operator allows private destinations. The request then goes to a checked address (the name is
  kept for the Host header and TLS), so a second DNS answer cannot swap in another address.
- Only the status line matters: at most MAX_READ bytes of the answer are read, then the
  connection is closed, so a huge answer costs nothing.
- The caller puts a total deadline on the attempt (a receiver may drip its answer a byte at a time).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import httpx

MAX_READ = 4096
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AttemptFailed(Exception):
    """The attempt did not get a status from the receiver; str() is safe to store and log."""


def refused_reason(ip: IPAddress) -> str | None:
    """Why `ip` is not a public destination, or None if it is."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for reason in ("loopback", "link_local", "private", "multicast", "unspecified", "reserved"):
        if getattr(ip, f"is_{reason}"):
            return reason.replace("_", "-")
    return None if ip.is_global else "not globally routable"


async def _addresses(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise AttemptFailed(f"cannot resolve {host}: {exc.strerror or exc}") from exc
    out: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])  # drop an IPv6 scope id
        if ip not in out:
            out.append(ip)
    return out


async def checked_addresses(url: httpx.URL, allow_private: bool) -> list[IPAddress]:
    host = url.raw_host.decode("ascii")
    if not host:
        raise AttemptFailed("webhook_url has no host")
    addresses = await _addresses(host, url.port or (443 if url.scheme == "https" else 80))
    if not addresses:
        raise AttemptFailed(f"cannot resolve {host}")
    if not allow_private:
        for ip in addresses:
            reason = refused_reason(ip)
            if reason:
                raise AttemptFailed(f"destination refused: {host} is {ip} ({reason}); "
                                    "see webhooks.allow_private_destinations")
    return addresses


async def post(client: httpx.AsyncClient, raw_url: str, body: bytes, headers: dict[str, str], *,
               allow_private: bool) -> int:
    """POST to a checked address of `raw_url`; the receiver's HTTP status."""
    try:
        url = httpx.URL(raw_url)
    except httpx.InvalidURL as exc:  # the API's check is looser than httpx's parser
        raise AttemptFailed("invalid webhook_url") from exc
    last: Exception | None = None
    for ip in (await checked_addresses(url, allow_private))[:4]:
        target = url.copy_with(host=str(ip))
        extensions = {"sni_hostname": url.raw_host.decode("ascii")} if url.scheme == "https" else {}
        try:
            async with client.stream("POST", target, content=body, extensions=extensions,
                                     headers={**headers, "Host": url.netloc.decode("ascii")}) as resp:
                read = 0
                async for chunk in resp.aiter_raw():  # a few KiB at most, then hang up
                    read += len(chunk)
                    if read >= MAX_READ:
                        break
                return resp.status_code
        except httpx.ConnectError as exc:  # try the next address, as a client connecting by name would
            last = exc
        except httpx.HTTPError as exc:
            raise AttemptFailed(f"{type(exc).__name__}: {exc}"[:300]) from exc
    raise AttemptFailed(f"{type(last).__name__}: {last}"[:300])
