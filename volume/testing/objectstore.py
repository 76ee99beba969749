"""``ObjectStoreTests``: the conformance kit every object-store plugin runs.

Subclass it in the plugin's test suite and provide a ``store`` fixture that returns an *empty*
store (the kit writes below it and expects to find only what it wrote)::

    import pytest
    from volume.testing import ObjectStoreTests

    class TestMyStore(ObjectStoreTests):
        @pytest.fixture
        def store(self, tmp_path):
            return MyStore.from_uri(f"my://{tmp_path.name}")

The process race opens the same store in other processes through the ``store_factory`` fixture: a
picklable callable without arguments that returns the store. The default,
``functools.partial(type(store).from_uri, store.uri)``, suits stores whose URI says everything;
override the fixture when it does not (credentials, options), and set
``shared_across_processes = False`` for a store that lives inside one process.

The whole class runs in a few seconds for a local store; it needs pytest (imported here only).
"""

from __future__ import annotations

import functools
import hashlib
import multiprocessing
import os
import queue
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar

import pytest

from ..errors import InvalidKeyError, ObjectExists, ObjectNotFound, VolumeValidationError
from ..stores import ObjectInfo, ObjectStore
from .streams import PipeStream

if TYPE_CHECKING:
    import multiprocessing.synchronize

__all__ = ["ObjectStoreTests"]

MiB = 1 << 20
KEY = "dir/sub/object"
# every way a key can be refused (spec/stores.md, "Keys")
REFUSED_KEYS = ["", ".", "..", "a/../b", "/abs", "a//b", "./a", "a/.", "a/", "a\0b"]
RACE_THREADS = 16
RACE_PROCESSES = 8
RACE_ROUNDS = 3
RACE_TIMEOUT_S = 60.0


def payload(size: int, seed: int = 0) -> bytes:
    """``size`` reproducible pseudo-random bytes: unlike a constant or short repeating pattern,
    they expose data read from the wrong offset."""
    return random.Random(seed).randbytes(size)


def race_payload(contender: int, round_: int) -> bytes:
    """What contender ``contender`` writes in race round ``round_`` (distinct for each)."""
    return payload(MiB, seed=1000 * round_ + contender)


def digest(data: bytes) -> str:
    """A short stand-in for large payloads in assertion messages."""
    return f"{len(data)} bytes sha256={hashlib.sha256(data).hexdigest()}"


def race_key(round_: int) -> str:
    """The key contended for in race round ``round_``."""
    return f"race/{round_}/object"


def _race_in_process(
    factory: Callable[[], ObjectStore],
    contender: int,
    barrier: "multiprocessing.synchronize.Barrier",
    outcomes: "multiprocessing.Queue[tuple[int, int, str]]",
) -> None:
    """One contender of the process race: put-if-absent once per round, all at the same time.

    Every failure is reported as an outcome, so the parent fails with it instead of timing out.
    """
    try:
        store = factory()
    except Exception as exc:
        barrier.abort()  # the others must not wait for a contender that never comes
        for round_ in range(RACE_ROUNDS):
            outcomes.put((round_, contender, f"failed: cannot open the store: {exc!r}"))
        return
    try:
        for round_ in range(RACE_ROUNDS):
            try:
                barrier.wait(RACE_TIMEOUT_S)
                store.put(race_key(round_), race_payload(contender, round_), if_absent=True)
                outcome = "won"
            except ObjectExists:
                outcome = "lost"
            except Exception as exc:  # reported to the parent, which fails the test with it
                outcome = f"failed: {exc!r}"
            outcomes.put((round_, contender, outcome))
    finally:
        store.close()


def _start_method() -> str:
    # forkserver forks each contender from one clean server (quick, no inherited threads);
    # spawn is the portable fallback
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


class ObjectStoreTests:
    """The contract of :class:`~volume.stores.ObjectStore` (``spec/stores.md``) as tests."""

    #: False for stores that cannot be opened from another process (skips the process race)
    shared_across_processes: ClassVar[bool] = True

    @pytest.fixture
    def store(self) -> ObjectStore:
        raise NotImplementedError(
            "a subclass of ObjectStoreTests provides a `store` fixture returning an empty store"
        )

    @pytest.fixture
    def store_factory(self, store: ObjectStore) -> Callable[[], ObjectStore]:
        """A picklable callable that opens ``store`` again (in this or another process)."""
        return functools.partial(type(store).from_uri, store.uri)

    @staticmethod
    def keys(store: ObjectStore, prefix: str = "") -> list[str]:
        """The keys ``store.list(prefix)`` yields."""
        return [info.key for info in store.list(prefix)]

    # ------------------------------------------------------------------ basic operations

    def test_put_get_round_trip(self, store: ObjectStore) -> None:
        data = payload(1000)
        store.put(KEY, data)
        store.put("top", b"top-level")
        assert store.get(KEY) == data
        assert store.get("top") == b"top-level"

    def test_put_stores_a_copy_of_the_buffer(self, store: ObjectStore) -> None:
        buffer = bytearray(b"abc")
        store.put(KEY, memoryview(buffer))
        buffer[0] = ord("z")
        assert store.get(KEY) == b"abc"

    def test_overwrite_replaces_the_whole_object(self, store: ObjectStore) -> None:
        store.put(KEY, payload(1000))
        store.put(KEY, b"short")
        assert store.get(KEY) == b"short"
        assert store.head(KEY).size == 5

    @pytest.mark.parametrize(
        ("start", "end", "expected"),
        [
            (0, None, slice(0, 100)),
            (10, None, slice(10, 100)),
            (10, 20, slice(10, 20)),
            (0, 1, slice(0, 1)),
            (90, 200, slice(90, 100)),  # end past the size is clamped
            (99, None, slice(99, 100)),
            (100, None, slice(0, 0)),  # start at the size
            (100, 150, slice(0, 0)),
            (150, None, slice(0, 0)),
            (30, 30, slice(0, 0)),  # empty range
            (0, 0, slice(0, 0)),
        ],
    )
    def test_range_reads(
        self, store: ObjectStore, start: int, end: int | None, expected: slice
    ) -> None:
        data = payload(100)
        store.put(KEY, data)
        assert store.get(KEY, start, end) == data[expected]

    @pytest.mark.parametrize(
        ("start", "room", "expected"),
        [(0, 100, slice(0, 100)), (10, 20, slice(10, 30)), (90, 30, slice(90, 100)),
         (100, 10, slice(0, 0)), (150, 10, slice(0, 0)), (5, 0, slice(0, 0))],
    )  # fmt: skip
    def test_reads_into_a_buffer(
        self, store: ObjectStore, start: int, room: int, expected: slice
    ) -> None:
        data = payload(100)
        store.put(KEY, data)
        buffer = bytearray(b"\xee" * (room + 3))
        n = store.get_into(KEY, start, memoryview(buffer)[:room])
        assert n == len(data[expected])
        assert buffer[:n] == data[expected]
        assert buffer[n:] == b"\xee" * (room + 3 - n)  # nothing past what was read is touched
        with pytest.raises(ObjectNotFound):
            store.get_into("no/such/key", 0, memoryview(buffer))
        with pytest.raises(VolumeValidationError):
            store.get_into(KEY, -1, memoryview(buffer))

    def test_an_object_file_holds_the_object(self, store: ObjectStore) -> None:
        """``open_file``: None for a store without files; else a descriptor of a file holding
        exactly the object, which later writes of other keys leave alone."""
        data = payload(5000)
        store.put(KEY, data)
        opened = store.open_file(KEY)
        if opened is None:
            return
        fd, size = opened
        try:
            store.put(KEY + "-other", b"x")
            assert size == len(data) == os.fstat(fd).st_size
            assert os.pread(fd, size + 10, 0) == data
        finally:
            os.close(fd)
        with pytest.raises(ObjectNotFound):
            store.open_file("no/such/key")

    def test_a_read_hint_never_fails(self, store: ObjectStore) -> None:
        store.will_read("no/such/key")  # a hint: a missing object fails when it is read
        store.put(KEY, payload(100))
        store.will_read(KEY)
        assert store.get(KEY) == payload(100)

    @pytest.mark.parametrize(("start", "end"), [(-1, None), (-1, 5), (10, 5)])
    def test_invalid_ranges_are_refused(
        self, store: ObjectStore, start: int, end: int | None
    ) -> None:
        store.put(KEY, payload(100))
        with pytest.raises(VolumeValidationError):
            store.get(KEY, start, end)

    def test_head_reports_the_size(self, store: ObjectStore) -> None:
        store.put(KEY, payload(12345))
        assert store.head(KEY) == ObjectInfo(KEY, 12345)

    def test_missing_objects_raise_object_not_found(self, store: ObjectStore) -> None:
        for read in (store.get, store.head, lambda key: store.get(key, 5, 10)):
            with pytest.raises(ObjectNotFound, match="no/such/key"):
                read("no/such/key")
        assert not store.exists("no/such/key")
        store.put("no/such/key", b"x")
        assert store.exists("no/such/key")

    def test_a_key_that_is_only_a_prefix_of_objects_is_missing(self, store: ObjectStore) -> None:
        store.put("a/b", b"x")
        with pytest.raises(ObjectNotFound):
            store.get("a")
        with pytest.raises(ObjectNotFound):
            store.head("a")
        assert not store.exists("a")

    def test_empty_object(self, store: ObjectStore) -> None:
        store.put("empty", b"")
        assert store.get("empty") == b""
        assert store.get("empty", 0, 10) == b""
        assert store.head("empty").size == 0
        assert list(store.list()) == [ObjectInfo("empty", 0)]

    def test_delete(self, store: ObjectStore) -> None:
        store.put(KEY, b"x")
        store.put("a/b", b"y")
        store.delete(KEY)
        with pytest.raises(ObjectNotFound):
            store.get(KEY)
        store.delete(KEY)  # again: deleting a missing key is fine
        store.delete("never/stored")
        store.delete("a")  # only a prefix of "a/b": not an object, and "a/b" stays
        assert self.keys(store) == ["a/b"]

    # ------------------------------------------------------------------ listing

    def test_list_prefix_semantics(self, store: ObjectStore) -> None:
        # a file system cannot hold both "a/b" and "a/b/c", so no key here is a directory of another
        keys = ["a/b/c", "a/b/d/e", "a/bc", "a/b.txt", "a/a", "ab", "b/x", "a-b", "a0"]
        for size, key in enumerate(keys, start=1):
            store.put(key, payload(size, seed=size))
        sizes = {key: size for size, key in enumerate(keys, start=1)}

        def listed(prefix: str) -> list[ObjectInfo]:
            return list(store.list(prefix))

        assert listed("") == [ObjectInfo(key, sizes[key]) for key in sorted(keys)]
        # "a/b" is a string prefix: it matches below "a/b/" and beside it ("a/bc", "a/b.txt")
        assert [i.key for i in listed("a/b")] == ["a/b.txt", "a/b/c", "a/b/d/e", "a/bc"]
        assert [i.key for i in listed("a/b/")] == ["a/b/c", "a/b/d/e"]
        assert [i.key for i in listed("a")] == sorted(k for k in keys if k.startswith("a"))
        assert [i.key for i in listed("a/b/c")] == ["a/b/c"]
        assert listed("a/b/d/") == [ObjectInfo("a/b/d/e", sizes["a/b/d/e"])]
        for unknown in ("zzz", "a/zz/", "a/b/c/", "c/"):
            assert listed(unknown) == [], unknown

    def test_list_sorts_unicode_keys_by_code_point(self, store: ObjectStore) -> None:
        keys = ["u/日本", "u/z", "u/é", "u/ф", "u/фа/x", "u/Z", "u/é.x"]
        for key in keys:
            store.put(key, key.encode())
        # code-point order is also UTF-8 byte order, the order S3 and JuiceFS list in
        assert self.keys(store, "u/") == sorted(keys)

    @pytest.mark.parametrize("prefix", ["/", "/a", "../", "a/../", "a//", "./", "a\0"])
    def test_list_refuses_invalid_prefixes(self, store: ObjectStore, prefix: str) -> None:
        with pytest.raises(InvalidKeyError):
            list(store.list(prefix))

    # ------------------------------------------------------------------ keys

    def test_unicode_keys(self, store: ObjectStore) -> None:
        key = "dir/é日本/ф.txt"
        store.put(key, "привет".encode())
        assert store.get(key) == "привет".encode()
        assert store.head(key).size == len("привет".encode())
        assert self.keys(store, "dir/") == [key]
        assert self.keys(store, "dir/é") == [key]
        store.delete(key)
        assert self.keys(store) == []

    @pytest.mark.parametrize("key", REFUSED_KEYS)
    def test_refused_keys_raise_before_any_io(
        self, store: ObjectStore, key: str, tmp_path: Path
    ) -> None:
        source = tmp_path / "source"
        source.write_bytes(b"data")
        operations: dict[str, Callable[[], object]] = {
            "get": lambda: store.get(key),
            "get range": lambda: store.get(key, 1, 2),
            "put": lambda: store.put(key, b"data"),
            "put if absent": lambda: store.put(key, b"data", if_absent=True),
            "head": lambda: store.head(key),
            "exists": lambda: store.exists(key),
            "delete": lambda: store.delete(key),
            "get_file": lambda: store.get_file(key, tmp_path / "dest"),
            "put_file": lambda: store.put_file(key, source),
        }
        for name, operation in operations.items():
            with pytest.raises(InvalidKeyError) as caught:
                operation()
            assert repr(key) in str(caught.value), name
        assert list(store.list()) == []
        assert not (tmp_path / "dest").exists()

    # ------------------------------------------------------------------ large objects

    def test_large_object_round_trip_and_range(self, store: ObjectStore) -> None:
        data = payload(64 * MiB + 3, seed=64)
        store.put("large", data)
        assert store.head("large").size == len(data)
        assert digest(store.get("large")) == digest(data)
        start, end = 32 * MiB - 100, 36 * MiB + 7  # a block-sized range across MiB boundaries
        assert digest(store.get("large", start, end)) == digest(data[start:end])

    # ------------------------------------------------------------------ files

    def test_get_file_and_put_file(self, store: ObjectStore, tmp_path: Path) -> None:
        data = payload(3 * MiB + 1)
        source = tmp_path / "source"
        source.write_bytes(data)
        assert store.put_file(KEY, source) == len(data)
        assert digest(store.get(KEY)) == digest(data)

        downloads = tmp_path / "downloads"
        downloads.mkdir()
        dest = downloads / "dest"
        dest.write_bytes(b"old content")
        assert store.get_file(KEY, dest) == len(data)
        assert digest(dest.read_bytes()) == digest(data)
        assert sorted(p.name for p in downloads.iterdir()) == ["dest"]  # no temporary left

        with pytest.raises(ObjectExists):
            store.put_file(KEY, tmp_path / "downloads" / "dest", if_absent=True)
        with pytest.raises(ObjectNotFound):
            store.get_file("missing", downloads / "other")
        assert sorted(p.name for p in downloads.iterdir()) == ["dest"]

    # ------------------------------------------------------------------ put if absent

    def test_put_if_absent(self, store: ObjectStore) -> None:
        store.put(KEY, b"first", if_absent=True)
        with pytest.raises(ObjectExists, match=KEY):
            store.put(KEY, b"second", if_absent=True)
        assert store.get(KEY) == b"first"
        store.put(KEY, b"third")  # a plain put still overwrites
        assert store.get(KEY) == b"third"

    def test_put_if_absent_thread_race_has_one_winner(self, store: ObjectStore) -> None:
        self.require_conditional_put(store)
        barrier = threading.Barrier(RACE_THREADS)

        def contend(contender: int, round_: int) -> str:
            barrier.wait(RACE_TIMEOUT_S)
            try:
                store.put(race_key(round_), race_payload(contender, round_), if_absent=True)
            except ObjectExists:
                return "lost"
            return "won"

        self.race_threads(store, contend)

    def test_put_if_absent_process_race_has_one_winner(
        self, store: ObjectStore, store_factory: Callable[[], ObjectStore]
    ) -> None:
        self.require_conditional_put(store)
        if not self.shared_across_processes:
            pytest.skip(f"{type(store).__name__} cannot be opened from another process")
        context = multiprocessing.get_context(_start_method())
        barrier = context.Barrier(RACE_PROCESSES)
        outcomes = context.Queue()
        processes = [
            context.Process(target=_race_in_process, args=(store_factory, n, barrier, outcomes))
            for n in range(RACE_PROCESSES)
        ]
        for process in processes:
            process.start()
        try:
            by_round: dict[int, dict[int, str]] = {r: {} for r in range(RACE_ROUNDS)}
            for _ in range(RACE_PROCESSES * RACE_ROUNDS):
                round_, contender, outcome = outcomes.get(timeout=RACE_TIMEOUT_S)
                by_round[round_][contender] = outcome
        except queue.Empty:
            pytest.fail(
                f"race processes did not report in time; exit codes: "
                f"{[process.exitcode for process in processes]}"
            )
        finally:
            for process in processes:
                process.join(RACE_TIMEOUT_S)
                if process.is_alive():
                    process.kill()
        for round_, round_outcomes in by_round.items():
            self.assert_one_winner(store, round_, round_outcomes)

    # ------------------------------------------------------------------ staged objects

    @staticmethod
    def stages(store: ObjectStore) -> bool:
        """Whether ``store`` stages objects; a store without the capability must refuse to."""
        if store.capabilities.staging:
            return True
        with pytest.raises(NotImplementedError):
            store.stage(KEY)
        return False

    def test_a_staged_object_appears_whole_when_sealed(self, store: ObjectStore) -> None:
        if not self.stages(store):
            return
        data = payload(3 * MiB + 5)
        staged = store.stage(KEY + "_0")
        staged.write(0, data[: MiB + 1])
        staged.write(MiB + 1, memoryview(data)[MiB + 1 :])
        staged.write(10, b"x" * 20)  # over earlier bytes
        expected = data[:10] + b"x" * 20 + data[30:]
        assert staged.read(len(data)) == expected
        assert self.keys(store) == [] and not store.exists(KEY)  # nobody sees it before
        staged.seal(KEY, len(data))  # another key of the same directory
        assert store.get(KEY) == expected and self.keys(store) == [KEY]
        with pytest.raises(ValueError):
            staged.write(0, b"after the seal")
        staged.discard()  # after the seal: nothing to drop
        assert store.get(KEY) == expected

    def test_a_staged_object_takes_byte_streams(self, store: ObjectStore) -> None:
        """``write_stream``: the bytes of a stream (as a FUSE write's, left in a pipe), in parts
        read in order, each where it belongs; a stream cannot be read twice or out of order."""
        if not self.stages(store):
            return
        data = payload(2 * MiB + 3)
        staged = store.stage(KEY)
        staged.write(0, data[:100])
        with PipeStream(data[100:]) as stream:
            first, second = stream[: MiB - 7], stream[MiB - 7 :]
            with pytest.raises(ValueError, match="out of order"):
                staged.write_stream(100, second)
            staged.write_stream(100, first)
            with pytest.raises(ValueError, match="out of order"):
                staged.write_stream(100, first)  # read already
            with pytest.raises(ValueError):
                staged.write_stream(len(data) + 1, second)  # a gap: refused before reading
            staged.write_stream(100 + len(first), second)
        assert staged.read(len(data)) == data
        staged.seal(KEY, len(data))
        assert store.get(KEY) == data

    def test_a_staged_object_has_no_gap_and_seals_the_length_given(
        self, store: ObjectStore
    ) -> None:
        if not self.stages(store):
            return
        staged = store.stage(KEY)
        staged.write(0, b"abcdef")
        with pytest.raises(ValueError):
            staged.write(7, b"d")
        with pytest.raises(ValueError):
            staged.seal(KEY, 7)  # more than was written
        with pytest.raises(InvalidKeyError):
            staged.seal("other/" + KEY, 3)  # another directory
        staged.seal(KEY, 3)  # less: the rest is dropped
        assert store.get(KEY) == b"abc" and self.keys(store) == [KEY]

    def test_sealing_over_an_existing_key_keeps_both(self, store: ObjectStore) -> None:
        if not self.stages(store):
            return
        store.put(KEY, b"first")
        staged = store.stage(KEY)
        staged.write(0, b"second")
        with pytest.raises(ObjectExists, match=KEY):
            staged.seal(KEY, 6)
        assert store.get(KEY) == b"first"
        assert staged.read(100) == b"second"  # still there, to be uploaded some other way
        staged.discard()
        staged.discard()  # twice is fine
        assert self.keys(store) == [KEY]

    def test_staged_seal_race_has_one_winner(self, store: ObjectStore) -> None:
        if not self.stages(store):
            return
        barrier = threading.Barrier(RACE_THREADS)

        def contend(contender: int, round_: int) -> str:
            staged = store.stage(race_key(round_))
            staged.write(0, race_payload(contender, round_))
            barrier.wait(RACE_TIMEOUT_S)
            try:
                staged.seal(race_key(round_), len(race_payload(contender, round_)))
            except ObjectExists:
                staged.discard()
                return "lost"
            return "won"

        self.race_threads(store, contend)
        assert self.keys(store) == sorted(race_key(r) for r in range(RACE_ROUNDS))

    @staticmethod
    def require_conditional_put(store: ObjectStore) -> None:
        if not store.capabilities.conditional_put:
            pytest.skip(f"{type(store).__name__} does not offer atomic put-if-absent")

    def race_threads(self, store: ObjectStore, contend: Callable[[int, int], str]) -> None:
        """``RACE_ROUNDS`` rounds of ``contend(contender, round)`` in ``RACE_THREADS`` threads,
        each round won by exactly one of them."""
        with ThreadPoolExecutor(RACE_THREADS) as pool:
            for round_ in range(RACE_ROUNDS):
                outcomes = list(pool.map(contend, range(RACE_THREADS), [round_] * RACE_THREADS))
                self.assert_one_winner(store, round_, dict(enumerate(outcomes)))

    @staticmethod
    def assert_one_winner(store: ObjectStore, round_: int, outcomes: dict[int, str]) -> None:
        """Exactly one contender won the round, the others lost cleanly, and the object holds
        the winner's bytes."""
        winners = [n for n, outcome in outcomes.items() if outcome == "won"]
        others = {n: outcome for n, outcome in outcomes.items() if outcome not in ("won", "lost")}
        assert not others, f"round {round_}: contenders failed: {others}"
        assert len(winners) == 1, f"round {round_}: winners {winners} (expected exactly one)"
        stored = store.get(race_key(round_))
        assert digest(stored) == digest(race_payload(winners[0], round_))

    # ------------------------------------------------------------------ concurrency

    def test_readers_never_see_a_partial_object(self, store: ObjectStore) -> None:
        versions = [payload(4 * MiB, seed=1), payload(6 * MiB, seed=2)]
        digests = {digest(v) for v in versions}
        store.put(KEY, versions[0])
        stop = threading.Event()
        seen: list[str] = []  # digests of every read that was neither version
        reads = 0

        def read() -> None:
            nonlocal reads
            while not stop.is_set():
                data = store.get(KEY)
                if data not in versions:
                    seen.append(digest(data))
                reads += 1

        reader = threading.Thread(target=read)
        reader.start()
        writes = 0
        deadline = time.monotonic() + 10
        try:
            # keep overwriting until the reader has overlapped a fair number of writes
            while (writes < 10 or reads < 10) and time.monotonic() < deadline:
                writes += 1
                store.put(KEY, versions[writes % 2])
        finally:
            stop.set()
            reader.join()
        assert not seen, (
            f"{len(seen)} of {reads} reads returned neither version, e.g. {seen[:3]}; "
            f"the versions are {sorted(digests)}"
        )
        assert reads >= 10 and writes >= 10

    def test_concurrent_puts_into_new_directories(self, store: ObjectStore) -> None:
        keys = [f"fresh/{d}/{n}" for d in range(4) for n in range(16)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda key: store.put(key, key.encode()), keys))
        assert self.keys(store, "fresh/") == sorted(keys)
        assert all(store.get(key) == key.encode() for key in keys)

    def test_reopened_store_sees_the_same_objects(
        self, store: ObjectStore, store_factory: Callable[[], ObjectStore]
    ) -> None:
        store.put(KEY, b"shared")
        reopened = store_factory()
        try:
            assert reopened.get(KEY) == b"shared"
            assert reopened.uri == store.uri
        finally:
            reopened.close()
