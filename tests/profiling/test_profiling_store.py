"""The capture directory: names, permissions, TMPDIR, listing, traversal and retention."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime

import pytest

from profiling import CaptureInfo, CaptureStore, ProfilingSettings, UnsafeDirectory


def make_capture(store: CaptureStore, when: datetime, size: int = 10, trigger: str = "api") -> CaptureInfo:
    cid = store.new_capture_id(when, 4242)
    info = CaptureInfo(cid, store.service, 4242, trigger, "completed", when, when)
    for kind in ("folded", "flamegraph", "threads", "alloc"):
        store.write_text(cid, kind, "x" * size)
    store.write_meta(info)
    listed = store.read(cid)
    assert listed is not None
    return listed


def test_names_follow_the_convention_and_files_are_private(tmp_path):
    store = CaptureStore(tmp_path / "svc_profile", "svc")
    store.prepare()
    info = make_capture(store, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert info.id == "20260102T030405Z_4242_svc"
    names = sorted(p.name for p in store.directory.iterdir())
    assert names == [
        "20260102T030405Z_4242_svc_alloc.txt",
        "20260102T030405Z_4242_svc_flamegraph.svg",
        "20260102T030405Z_4242_svc_folded.txt",
        "20260102T030405Z_4242_svc_meta.json",
        "20260102T030405Z_4242_svc_threads.txt",
    ]
    for path in store.directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    listed = store.list()
    assert [c.id for c in listed] == [info.id]
    assert listed[0].trigger == "api" and set(listed[0].files) == {"folded", "flamegraph", "threads", "alloc", "meta"}


def test_same_second_gets_the_next_free_second(tmp_path):
    store = CaptureStore(tmp_path / "d", "svc")
    store.prepare()
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    first = make_capture(store, when)
    second = make_capture(store, when)
    assert first.id != second.id and second.id.startswith("20260102T030406Z")


def test_prepare_creates_0700_and_tightens_a_loose_directory(tmp_path):
    directory = tmp_path / "loose"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)
    CaptureStore(directory, "svc").prepare()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    fresh = tmp_path / "a" / "b"
    CaptureStore(fresh, "svc").prepare()
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700


def test_prepare_refuses_a_symlink(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "svc_profile"
    link.symlink_to(target)
    with pytest.raises(UnsafeDirectory, match="not a plain directory"):
        CaptureStore(link, "svc").prepare()


def test_directory_defaults_to_tmpdir_at_use_time(tmp_path, monkeypatch):
    settings = ProfilingSettings(service_name="my svc_1")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "one"))
    (tmp_path / "one").mkdir()
    assert settings.resolve_directory() == tmp_path / "one" / "my-svc-1_profile"
    (tmp_path / "two").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "two"))
    assert settings.resolve_directory() == tmp_path / "two" / "my-svc-1_profile"
    assert ProfilingSettings(directory=tmp_path / "x").resolve_directory() == tmp_path / "x"


def test_resolve_file_accepts_listed_names_only(tmp_path):
    store = CaptureStore(tmp_path / "d", "svc")
    store.prepare()
    info = make_capture(store, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    (tmp_path / "d" / "notes.txt").write_text("not a capture file")
    (tmp_path / "secret.txt").write_text("secret")
    assert store.resolve_file(info.files["folded"]) == store.directory / info.files["folded"]
    for bad in ("../secret.txt", "notes.txt", "..", "/etc/passwd", "20260102T030405Z_4242_svc_folded.txt/..",
                "20260102T030405Z_9999_svc_folded.txt"):
        assert store.resolve_file(bad) is None, bad


def test_retention_deletes_whole_oldest_captures_by_count_and_bytes(tmp_path):
    store = CaptureStore(tmp_path / "d", "svc")
    store.prepare()
    infos = [make_capture(store, datetime(2026, 1, 1, 0, 0, i, tzinfo=UTC), size=100) for i in range(5)]
    (tmp_path / "d" / "unrelated.txt").write_text("kept")
    deleted = store.enforce_retention(max_files=11, max_bytes=10**9)  # 5 files per capture
    assert deleted == [infos[0].id, infos[1].id, infos[2].id]
    assert [c.id for c in store.list()] == [infos[4].id, infos[3].id]
    assert (tmp_path / "d" / "unrelated.txt").exists()
    # By bytes: each capture holds 4*100 bytes plus a meta file of a few hundred bytes.
    deleted = store.enforce_retention(max_files=100, max_bytes=1000)
    assert deleted == [infos[3].id]
    assert [c.id for c in store.list()] == [infos[4].id]


def test_retention_keeps_the_protected_capture(tmp_path):
    store = CaptureStore(tmp_path / "d", "svc")
    store.prepare()
    infos = [make_capture(store, datetime(2026, 1, 1, 0, 0, i, tzinfo=UTC)) for i in range(3)]
    store.enforce_retention(max_files=5, max_bytes=10**9, keep={infos[0].id})
    assert {c.id for c in store.list()} == {infos[0].id}


def test_running_capture_of_a_dead_process_lists_as_interrupted(tmp_path):
    store = CaptureStore(tmp_path / "d", "svc")
    store.prepare()
    when = datetime(2026, 1, 1, tzinfo=UTC)
    dead_pid = 2**22 + 17  # above pid_max on default kernels
    store.write_meta(CaptureInfo(f"20260101T000000Z_{dead_pid}_svc", "svc", dead_pid, "signal", "running", when))
    own = CaptureInfo(f"20260101T000001Z_{os.getpid()}_svc", "svc", os.getpid(), "api", "running", when)
    store.write_meta(own)
    statuses = {c.pid: c.status for c in store.list()}
    assert statuses == {dead_pid: "interrupted", os.getpid(): "running"}
