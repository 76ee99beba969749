"""Sequences the lifecycle machine found or that guard its rules, replayed step by step with every
invariant checked after each step (as hypothesis would run them)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from volume.allocator import DOMAIN_BITS, FOREIGN_DOMAIN
from volume.testing.lifecycle_machine import LifecycleMachine

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


class Memory(LifecycleMachine):
    def make_bucket(self) -> str:
        return f"memory://regress-{uuid.uuid4().hex}"


def replay(*steps: Callable[[LifecycleMachine], object]) -> LifecycleMachine:
    m = Memory()
    try:
        for step in steps:
            step(m)
            m.disjoint_keys()
            m.handles_read_back()
            m.versions_read_back()
    finally:
        m.teardown()
    return m


def test_hard_links_survive_a_commit_and_remount() -> None:
    """Found while modelling: after finalize and remount, d/x and d/y are still one file, so a
    truncate through one name shows through the other."""
    replay(
        lambda m: m.first_volume(seed=1),
        lambda m: m.truncate(i=0, length=1, path="d/x"),
        lambda m: m.hard_link(i=0, src="d/x", dst="d/y"),
        lambda m: m.close(i=0, publish=True),
        lambda m: m.mount_rw(i=0),
        lambda m: m.truncate(i=0, length=4096, path="d/y"),
        lambda m: m.commit(i=0),
    )


def test_commits_after_an_abandoned_remount_chain_to_the_last_commit() -> None:
    """Lineage stays linear across sessions of one handle: commit, abandon, remount, commit."""
    m = replay(
        lambda m: m.first_volume(seed=0),
        lambda m: m.commit(i=0),
        lambda m: m.write(i=0, path="b", seed=2, size=100),
        lambda m: m.close(i=0, publish=False),
        lambda m: m.mount_rw(i=0),
        lambda m: m.write(i=0, path="c", seed=3, size=7),
        lambda m: m.commit(i=0),
    )
    first, second = m.published
    assert second.vol.parent_produced_by == first.vol.produced_by


def test_a_never_committed_volume_is_not_formatted_twice() -> None:
    replay(
        lambda m: m.first_volume(seed=0),
        lambda m: m.close(i=0, publish=False),
        lambda m: m.mount_rw(i=0),  # VolumeBucketNotEmpty, nothing written
        lambda m: m.fork(i=0, of_version=False),  # VolumeNotForkable, nothing written
    )


def test_sessions_continuing_from_a_pinned_index_stay_in_their_own_lane() -> None:
    """A published index points nextChunk at the foreign lane; a session that continues from it
    (a remount, a fork, a live fork) must move down into the lane it claimed."""
    m = replay(
        lambda m: m.first_volume(seed=0),
        lambda m: m.close(i=0, publish=True),
        lambda m: m.mount_rw(i=0),
        lambda m: m.write(i=0, path="b", seed=1, size=70_000),
        lambda m: m.fork(i=0, of_version=False),  # live fork: commits first
        lambda m: m.mount_rw(i=0),  # the fork
        lambda m: m.write(i=1, path="c", seed=2, size=5000),
        lambda m: m.close(i=1, publish=True),
        lambda m: m.close(i=0, publish=True),
    )
    lanes = {sid >> DOMAIN_BITS for _, sid in m.slice_owner}
    assert FOREIGN_DOMAIN not in lanes and len(lanes) == 3


def test_fork_of_a_migrated_version_and_migrating_back() -> None:
    types = __import__("volume").plugins.names("volume.meta_stores")
    if len(types) < 2:
        pytest.skip("one metadata store type installed: nothing to migrate to")
    replay(
        lambda m: m.first_volume(seed=0),
        lambda m: m.commit(i=0),
        lambda m: m.migrate_to(0, next(t for t in types if t != m.default_type)),
        lambda m: m.fork(i=1, of_version=True),
        lambda m: m.mount_rw(i=0),
        lambda m: m.write(i=1, path="z", seed=3, size=4096),
        lambda m: m.close(i=1, publish=True),
        lambda m: m.migrate_to(len(m.published) - 1, m.default_type),
    )
