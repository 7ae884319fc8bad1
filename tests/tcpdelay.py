"""A TCP proxy that adds one-way latency, to model a WAN round trip in front of sshd.

    with DelayProxy("127.0.0.1", host.port, delay_ms=40) as proxy:
        ssh -p {proxy.port} root@127.0.0.1 ...   # every round trip now takes >= 80 ms

Each chunk read from either side is written to the other side `delay_ms` after it was
read. Chunks are pipelined (a stream of chunks is delayed, not slowed down per chunk), in
order, and half-closes (EOF) are forwarded with the same delay. It runs its own asyncio
loop in a daemon thread, so it works from synchronous tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time


class DelayProxy:
    """Listen on 127.0.0.1:`port` and forward to `target_host`:`target_port`, adding
    `delay_ms` of latency in each direction."""

    host = "127.0.0.1"

    def __init__(self, target_host: str, target_port: int, delay_ms: float) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.delay_ms = delay_ms
        self.port = 0
        self.connections = 0  # accepted so far
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def __enter__(self) -> DelayProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start listening; `.port` is set when this returns."""
        if self._thread is not None:
            return
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._handle, self.host, self.port)
                )
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as e:
                failure.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"DelayProxy:{id(self):x}", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread = None
            raise failure[0]

    def close(self) -> None:
        """Stop listening and drop every proxied connection."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        with contextlib.suppress(RuntimeError):  # loop already closed
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=5)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        self._thread = None

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        server_w: asyncio.StreamWriter | None = None
        try:
            server_r, server_w = await asyncio.open_connection(self.target_host, self.target_port)
            await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (client_w, server_w):
                if w is not None:
                    w.close()
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy reader → writer, each chunk delivered `delay_ms` after it was read."""
        delay = self.delay_ms / 1000
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def read() -> None:
            try:
                while chunk := await reader.read(65536):
                    queue.put_nowait((time.monotonic() + delay, chunk))
            finally:
                queue.put_nowait((time.monotonic() + delay, b""))  # EOF or error

        async def write() -> None:
            while True:
                due, chunk = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not chunk:
                    if writer.can_write_eof() and not writer.is_closing():
                        writer.write_eof()
                    return
                writer.write(chunk)
                await writer.drain()

        reading = asyncio.ensure_future(read())
        try:
            await write()
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await reading
