"""A TCP proxy in front of the session's PostgreSQL that a test can cut and restore: a
database outage for the services behind it (refused connections, and connections that
die mid-statement) without stopping the server the other tests share."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from sqlalchemy.engine import make_url


@dataclass
class PgProxy:
    target_url: str
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        """The target's URL with the proxy as host."""
        u = make_url(self.target_url)
        query = {k: v for k, v in u.query.items() if k != "host"}
        return u.set(host="127.0.0.1", port=self.port, query=query).render_as_string(
            hide_password=False)

    async def _open_target(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        u = make_url(self.target_url)
        socket_dir = u.query.get("host")
        if isinstance(socket_dir, tuple):
            socket_dir = socket_dir[0]
        if socket_dir:
            return await asyncio.open_unix_connection(f"{socket_dir}/.s.PGSQL.{u.port or 5432}")
        return await asyncio.open_connection(u.host or "127.0.0.1", u.port or 5432)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            t_reader, t_writer = await self._open_target()
        except OSError:
            writer.close()
            return
        self._writers |= {writer, t_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, t_writer), pipe(t_reader, writer))
        self._writers -= {writer, t_writer}

    async def cut(self) -> None:
        """PostgreSQL goes away: new connections are refused, open ones die."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def restore(self) -> None:
        await self.start()

    async def stop(self) -> None:
        await self.cut()
