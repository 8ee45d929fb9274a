"""A DNS server on loopback that gives one name several addresses, for tests.

gRPC's c-ares resolver takes a DNS server in the target's authority
(``dns://127.0.0.1:PORT/name:port``), so a test can make a `dns:///` name
resolve to several loopback addresses without touching /etc/hosts, the way a
Kubernetes headless Service resolves to every ready pod.

It answers A queries for its one name with every address, and anything else
with no answer (NXDOMAIN for other names). UDP only, one packet a query.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Sequence

_TYPE_A = 1
_CLASS_IN = 1
_TTL_SECONDS = 1
_NXDOMAIN = 3


class TinyDNS:
    """Serves `name` -> `addresses` on 127.0.0.1:port until closed."""

    def __init__(self, name: str, addresses: Sequence[str]) -> None:
        self.name = name.rstrip(".").lower()
        self.addresses = list(addresses)
        self.queries: list[tuple[str, int]] = []
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._socket.close()

    def _serve(self) -> None:
        while True:
            try:
                query, peer = self._socket.recvfrom(512)
                self._socket.sendto(self._answer(query), peer)
            except OSError:
                return

    def _answer(self, query: bytes) -> bytes:
        (ident,) = struct.unpack(">H", query[:2])
        labels = []
        position = 12
        while query[position]:
            length = query[position]
            labels.append(query[position + 1 : position + 1 + length].decode())
            position += length + 1
        (query_type,) = struct.unpack(">H", query[position + 1 : position + 3])
        question = query[12 : position + 5]
        name = ".".join(labels).lower()
        self.queries.append((name, query_type))

        records = []
        if name == self.name and query_type == _TYPE_A:
            for address in self.addresses:
                # A pointer to the question's name, then type, class, TTL, data.
                fixed = struct.pack(">HHIH", _TYPE_A, _CLASS_IN, _TTL_SECONDS, 4)
                records.append(b"\xc0\x0c" + fixed + socket.inet_aton(address))
        code = 0 if name == self.name else _NXDOMAIN
        flags = 0x8180 | code  # a response, recursion desired and available
        header = struct.pack(">HHHHHH", ident, flags, 1, len(records), 0, 0)
        return header + question + b"".join(records)
