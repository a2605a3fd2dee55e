"""How a run's sockets reach each other: `ipc://` in the private run dir, or `tcp://` with CURVE.

A local run keeps `ipc://` (the 0700 run dir is its guard). A `tcp` run gives every party
(the supervisor and each daemon) a CURVE keypair made for that run; every socket that binds
is a CURVE server under a ZAP handler that admits only the run's public keys, and every
socket that connects is a CURVE client that knows its server's public key. Secret keys reach
a daemon on its stdin, one JSON line (`PartyKeys.to_line`), never in argv, env or a file.
No torch.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import IO, TYPE_CHECKING

import zmq
from zmq.utils import z85

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

TRANSPORTS = ("ipc", "tcp")
ZAP_DOMAIN = "specdeck"
KEYS_LINE_LIMIT = 64 * 1024  # bytes of the stdin line; a few parties' keys take under 1 KiB
_WILDCARDS = {"*", "0.0.0.0", "::", "[::]", ""}
_TCP = re.compile(r"^tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/\[\]]+):(?P<port>[0-9]{1,5})$")


@dataclass(frozen=True)
class Transport:
    """`ipc` (endpoints in the run dir) or `tcp` bound on `host` (a concrete address peers
    can reach: ports are ephemeral and reported back, so a wildcard would report nothing
    connectable)."""

    kind: str = "ipc"
    host: str = "127.0.0.1"  # tcp only: where this side binds

    def __post_init__(self) -> None:
        if self.kind not in TRANSPORTS:
            raise ValueError(f"unknown transport {self.kind!r} (ipc or tcp)")
        if self.kind == "tcp" and self.host.strip() in _WILDCARDS:
            raise ValueError(f"tcp needs an address peers can reach, not {self.host!r}")

    @property
    def is_tcp(self) -> bool:
        return self.kind == "tcp"

    def bind_endpoint(self, run_dir: object, name: str) -> str:
        """Where a socket named `name` binds: `ipc://RUN_DIR/NAME` or `tcp://HOST:0`."""
        if self.kind == "ipc":
            return f"ipc://{run_dir}/{name}"
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"tcp://{host}:0"


IPC = Transport()


def is_unbound(endpoint: str) -> bool:
    """Whether `endpoint` asks for an ephemeral tcp port (`tcp://HOST:0`) not yet known."""
    found = _TCP.match(endpoint)
    return bool(found) and int(found["port"]) == 0


def tcp_endpoint_problem(endpoint: object) -> str | None:
    """Why a reported endpoint is not a connectable `tcp://HOST:PORT`, or None."""
    found = _TCP.match(endpoint) if isinstance(endpoint, str) else None
    if found is None:
        return f"not a tcp://HOST:PORT endpoint: {str(endpoint)[:80]!r}"
    if not 0 < int(found["port"]) < 65536 or found["host"] in _WILDCARDS:
        return f"not a connectable endpoint: {endpoint!r}"
    return None


def bind(sock: zmq.Socket, endpoint: str) -> str:
    """Bind and return the endpoint really bound (the ephemeral port of `tcp://HOST:0`)."""
    if endpoint.startswith("tcp://["):
        sock.setsockopt(zmq.IPV6, 1)
    sock.bind(endpoint)
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def connect(sock: zmq.Socket, endpoint: str) -> None:
    """Connect, allowing IPv6 where the endpoint is one."""
    if endpoint.startswith("tcp://["):
        sock.setsockopt(zmq.IPV6, 1)
    sock.connect(endpoint)


@dataclass(frozen=True)
class Keypair:
    """One CURVE keypair, Z85 text (40 characters each)."""

    public: bytes
    secret: bytes = field(repr=False)

    @classmethod
    def new(cls) -> Keypair:
        public, secret = zmq.curve_keypair()
        return cls(public, secret)


@dataclass(frozen=True)
class PartyKeys:
    """What one party of a run holds: its own keypair (it serves and connects with it) and
    the public key of every party of the run (whom it admits, and whom it connects to)."""

    party: str  # "supervisor", "target", "draft"
    own: Keypair = field(repr=False)
    peers: Mapping[str, bytes]  # party -> public key, this one's included

    @property
    def admitted(self) -> frozenset[bytes]:
        """The client keys this party's servers accept: the run's parties, nobody else."""
        return frozenset(self.peers.values())

    def server_options(self) -> dict[int, int | bytes]:
        """Socket options of a socket that binds (a CURVE server)."""
        return {
            zmq.CURVE_SERVER: 1,
            zmq.CURVE_SECRETKEY: self.own.secret,
            zmq.ZAP_DOMAIN: ZAP_DOMAIN.encode(),
        }

    def client_options(self, server: str) -> dict[int, int | bytes]:
        """Socket options of a socket that connects to party `server`'s bound socket."""
        if server not in self.peers:
            raise ValueError(f"no {server!r} in this run's keys")
        return {
            zmq.CURVE_SERVERKEY: self.peers[server],
            zmq.CURVE_PUBLICKEY: self.own.public,
            zmq.CURVE_SECRETKEY: self.own.secret,
        }

    def to_line(self) -> bytes:
        """One JSON line for a daemon's stdin (it holds this party's secret key)."""
        doc = {
            "party": self.party,
            "public": self.own.public.decode(),
            "secret": self.own.secret.decode(),
            "peers": {name: key.decode() for name, key in self.peers.items()},
        }
        return json.dumps(doc).encode() + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> PartyKeys:
        """The keys `to_line` wrote; ValueError (one line) for anything else."""
        try:
            doc = json.loads(line)
            own = Keypair(_key(doc["public"]), _key(doc["secret"]))
            peers = {str(name): _key(key) for name, key in dict(doc["peers"]).items()}
            party = str(doc["party"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"unreadable CURVE keys ({type(exc).__name__})") from None
        if peers.get(party) != own.public:
            raise ValueError("unreadable CURVE keys (own public key missing from peers)")
        return cls(party, own, MappingProxyType(peers))


def _key(text: object) -> bytes:
    """A Z85 key of 40 characters, as bytes."""
    if not isinstance(text, str) or len(text) != 40:
        raise ValueError("a CURVE key is 40 Z85 characters")
    z85.decode(text)  # raises ValueError on a character outside Z85
    return text.encode()


@dataclass(frozen=True)
class RunKeys:
    """A run's keys: one fresh keypair per party, made with zmq.curve_keypair()."""

    pairs: Mapping[str, Keypair] = field(repr=False)

    @classmethod
    def new(cls, parties: Iterable[str] = ("supervisor", "target", "draft")) -> RunKeys:
        return cls(MappingProxyType({name: Keypair.new() for name in parties}))

    def party(self, name: str) -> PartyKeys:
        """What party `name` is handed: its own keypair and every party's public key."""
        peers = MappingProxyType({n: pair.public for n, pair in self.pairs.items()})
        return PartyKeys(name, self.pairs[name], peers)


def read_keys(stream: IO[bytes]) -> PartyKeys:
    """A daemon's keys from its stdin: one line, then the stream is done with."""
    line = stream.readline(KEYS_LINE_LIMIT)
    if not line.endswith(b"\n"):
        raise ValueError("no CURVE keys on stdin (a tcp daemon gets them there, one line)")
    return PartyKeys.from_line(line)


class _Admitted:
    """The ZAP callback: a client key is admitted when it is one of the run's."""

    def __init__(self, keys: frozenset[bytes]) -> None:
        self.keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        return domain == ZAP_DOMAIN and key in self.keys


def start_authenticator(ctx: zmq.Context, keys: PartyKeys) -> ThreadAuthenticator:
    """A ZAP handler on `ctx` admitting only the run's keys; start it before any bind
    (without one, a CURVE server admits any client key)."""
    from zmq.auth.thread import ThreadAuthenticator  # asyncio: only where tcp is used

    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=_Admitted(keys.admitted))
    return auth


def apply(sock: zmq.Socket, options: Mapping[int, int | bytes]) -> None:
    """Set socket options (the CURVE ones above) before a bind or connect."""
    for option, value in options.items():
        sock.setsockopt(option, value)
