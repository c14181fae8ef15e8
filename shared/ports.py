"""Whether a local TCP port is free, and which process listens on it (for `make up`,
which must refuse to start rather than health-check somebody else's service)."""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

import psutil


@dataclass(frozen=True, slots=True)
class Holder:
    pid: int | None
    name: str
    cmdline: str

    def __str__(self) -> str:
        if self.pid is None:
            return "a process this user cannot see"
        what = self.cmdline or self.name
        return f"pid {self.pid} ({what[:120]})"


def is_taken(host: str, port: int) -> bool:
    """True when binding host:port fails because the address is in use (a listener
    on 0.0.0.0 or :: takes 127.0.0.1 too)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As the gRPC server does: a port left in TIME_WAIT by a stopped run is free,
        # only a listener makes the bind fail.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def holders(port: int) -> list[Holder]:
    """The processes listening on `port` on any address; empty when none or unknown."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return []
    pids = sorted(
        {c.pid for c in connections if c.status == psutil.CONN_LISTEN and c.laddr
         and c.laddr.port == port},
        key=lambda p: -1 if p is None else p,
    )
    found = []
    for pid in pids:
        if pid is None:
            found.append(Holder(None, "", ""))
            continue
        try:
            proc = psutil.Process(pid)
            found.append(Holder(pid, proc.name(), " ".join(" ".join(proc.cmdline()).split())))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            found.append(Holder(pid, "", ""))
    return found


def listener_pids(port: int) -> set[int]:
    return {h.pid for h in holders(port) if h.pid is not None}


def describe(port: int) -> str:
    found = holders(port)
    if not found:
        return "held by a process that could not be identified"
    return "held by " + ", ".join(str(h) for h in found)
