"""``PipeStream``: a :class:`~volume.stores.ByteStream` whose bytes wait in a real pipe.

It behaves as the stream a FUSE mount hands the engine for a big write (the request's data,
spliced out of ``/dev/fuse`` into a pipe): read once and in order, moved into a file with
``splice(2)``. Store plugins and engine tests use it to exercise ``write_stream`` without a mount::

    with PipeStream(data) as stream:
        staged.write_stream(0, stream)
"""

from __future__ import annotations

import os
import threading

from ..stores import ByteStream

__all__ = ["PipeStream"]


class PipeStream(ByteStream):
    """``data`` fed into a pipe by a thread of its own; close it (or use ``with``) when done.

    Reading less than all of it is fine (as when a write fails part way): closing drops the rest.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(len(data))
        self._reader, writer = os.pipe()
        self._feeder = threading.Thread(target=self._feed, args=(writer, data), daemon=True)
        self._feeder.start()

    @staticmethod
    def _feed(fd: int, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError:  # the reading end was closed before the end: the rest is dropped
            pass
        finally:
            os.close(fd)

    def _read_next(self, n: int) -> bytes:
        parts = []
        while n:
            part = os.read(self._reader, n)
            if not part:
                raise OSError(f"pipe ended {n} bytes early")
            parts.append(part)
            n -= len(part)
        return b"".join(parts)

    def _write_next(self, n: int, fd: int, offset: int) -> None:
        while n:
            moved = os.splice(self._reader, fd, n, offset_dst=offset)
            if not moved:
                raise OSError(f"pipe ended {n} bytes early")
            n -= moved
            offset += moved

    def close(self) -> None:
        if self._reader >= 0:
            os.close(self._reader)
            self._reader = -1
            self._feeder.join()

    def __enter__(self) -> PipeStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
