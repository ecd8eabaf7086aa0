"""Backup validity from the file's structure: the truncated SysReptor zip is caught."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import logging
import os
import pwd
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from exporter.collectors.backups import BackupCollector
from exporter.runtime import run_once
from taskmedic.archive import check_file, check_stream
from taskmedic.backups import in_progress
from taskmedic.config.model import Backup
from tests.conftest import Database
from tests.exporter.helpers import collect, value
from tests.services import pg_bindir, tempdir, writer


def make_zip(path: Path, size: int = 200_000, **kw: object) -> Path:
    with zipfile.ZipFile(path, "w", **kw) as z:  # type: ignore[arg-type]
        z.writestr("backup.jsonl", os.urandom(size // 2).hex()[: size])
        z.writestr("stats.json", "{}")
    return path


def truncate(path: Path, drop: int) -> Path:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - drop)
    return path


def age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_zip_complete_and_truncated(tmp: Path) -> None:
    assert check_file(str(make_zip(tmp / "a.zip")))[0]
    ok, why = check_file(str(truncate(make_zip(tmp / "b.zip"), 120)))
    assert not ok and "end-of-central-directory" in why
    # cut in the middle of the data, as a writer killed mid-stream leaves it
    ok, _ = check_file(str(truncate(make_zip(tmp / "c.zip"), 100_000)))
    assert not ok


def test_zip_with_a_comment_and_zip64(tmp: Path) -> None:
    p = tmp / "comment.zip"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("a", "b")
        z.comment = b"PK\x05\x06 fake record inside the comment"
    assert check_file(str(p))[0]
    p64 = tmp / "z64.zip"
    with zipfile.ZipFile(p64, "w", allowZip64=True) as z:
        for i in range(70_000):  # more entries than a classic record can count: ZIP64
            z.writestr(f"f{i}", b"")
    ok, why = check_file(str(p64))
    assert ok, why
    assert not check_file(str(truncate(p64, 30)))[0]


def test_gzip_tar_and_plain(tmp: Path) -> None:
    raw = os.urandom(300_000)
    gz = tmp / "dump.sql.gz"
    gz.write_bytes(gzip.compress(raw))
    assert check_file(str(gz))[0]
    cut = tmp / "cut.sql.gz"
    cut.write_bytes(gzip.compress(raw)[:-5000])
    ok, why = check_file(str(cut))
    assert not ok and "truncated" in why
    tar = tmp / "files.tar"
    with tarfile.open(tar, "w") as t:
        info = tarfile.TarInfo("x")
        info.size = 5000
        t.addfile(info, io.BytesIO(b"x" * 5000))
    assert check_file(str(tar))[0]
    # tar pads to 10 KiB records, so a writer killed mid-file leaves data, not zeros, at the end
    assert not check_file(str(truncate(tar, tar.stat().st_size - 2560)))[0]
    empty = tmp / "empty.bak"
    empty.write_bytes(b"")
    assert not check_file(str(empty))[0]


def test_real_pg_dump_custom_format(db: Database, tmp: Path) -> None:
    db.sql("create table t as select generate_series(1, 1000) as x")
    out = tmp / "db.dump"
    subprocess.run([f"{pg_bindir()}/pg_dump", "-Fc", "-f", str(out), db.dsn], check=True)
    assert check_file(str(out)) == (True, check_file(str(out))[1])
    assert check_file(str(out))[0]
    garbage = tmp / "bad.dump"
    garbage.write_bytes(b"PGDMX" + b"\0" * 100)
    assert not check_file(str(garbage))[0]


@pytest.mark.parametrize("drop", [1, 22, 4096])
def test_any_truncation_of_the_tail_is_caught(tmp: Path, drop: int) -> None:
    assert not check_file(str(truncate(make_zip(tmp / "t.zip"), drop)))[0]


async def test_backup_set_newest_invalid_in_progress_and_sizes(tmp: Path) -> None:
    d = tmp / "backups"
    d.mkdir()
    older = make_zip(d / "backup-1.zip", 400_000)
    age(older, 86400)
    newest = truncate(make_zip(d / "backup-2.zip", 100_000), 200)
    age(newest, 3600)
    (d / "notes.txt").write_text("not a backup")
    cfg = f"backups:\n  sysreptor:\n    path: {d}\n    pattern: '*.zip'\n"
    r = (await collect(tmp, cfg))["backups:sysreptor"]
    assert r.up, r.error
    assert value(r, "taskmedic_backup_files") == 2
    assert value(r, "taskmedic_backup_valid") == 0
    assert value(r, "taskmedic_backup_size_bytes") == newest.stat().st_size
    assert value(r, "taskmedic_backup_previous_size_bytes") == older.stat().st_size
    assert value(r, "taskmedic_backup_last_modified_timestamp_seconds") == pytest.approx(newest.stat().st_mtime)
    assert value(r, "taskmedic_backup_last_valid_timestamp_seconds") == pytest.approx(older.stat().st_mtime)
    # a backup being written right now is not judged: the finished one before it is
    writing = d / "backup-3.zip"
    writing.write_bytes(b"PK\x03\x04 partial")
    r = (await collect(tmp, cfg))["backups:sysreptor"]
    assert value(r, "taskmedic_backup_in_progress") == 1
    assert value(r, "taskmedic_backup_valid") == 0  # still backup-2's verdict


async def test_missing_backup_directory_is_a_collector_failure(tmp: Path) -> None:
    r = (await collect(tmp, f"backups:\n  gone:\n    path: {tmp}/nope\n"))["backups:gone"]
    assert not r.up and "does not exist" in (r.error or "")


async def test_disk_ratios_match_statvfs(tmp: Path) -> None:
    r = (await collect(tmp, f"disks:\n  - path: {tmp}\n"))[f"disk:{tmp}"]
    st = os.statvfs(tmp)
    ratio = value(r, "taskmedic_disk_free_ratio", path=str(tmp))
    assert ratio is not None and 0 < ratio <= 1
    assert value(r, "taskmedic_disk_size_bytes") == st.f_blocks * st.f_frsize
    inodes = value(r, "taskmedic_disk_inodes_free_ratio")
    assert inodes is not None and 0 <= inodes <= 1


def test_gzip_members_padding_and_a_truncated_last_member(tmp: Path) -> None:
    raw = os.urandom(200_000)
    multi = tmp / "multi.gz"
    multi.write_bytes(gzip.compress(raw) + gzip.compress(raw) + gzip.compress(raw))
    assert check_file(str(multi))[0]
    cut = tmp / "multi-cut.gz"
    cut.write_bytes(gzip.compress(raw) + gzip.compress(raw) + gzip.compress(raw)[:-4000])
    assert not check_file(str(cut))[0]
    padded = tmp / "padded.gz"  # tape-style zero padding, which gzip(1) accepts
    padded.write_bytes(gzip.compress(raw) + b"\0" * 4096)
    assert check_file(str(padded))[0]
    garbage = tmp / "garbage.gz"
    garbage.write_bytes(gzip.compress(raw) + b"\0" * 10 + b"junk")
    assert not check_file(str(garbage))[0]


def test_zip_with_bytes_after_the_end_record_and_a_signature_in_its_comment(tmp: Path) -> None:
    p = make_zip(tmp / "trailing.zip")
    with open(p, "ab") as f:
        f.write(b"\0" * 100)  # some tools pad archives; zipfile reads them
    assert zipfile.ZipFile(p).testzip() is None
    assert check_file(str(p))[0]
    q = tmp / "sig-in-comment.zip"
    with zipfile.ZipFile(q, "w") as z:
        z.writestr("a", "b")
        z.comment = b"PK\x05\x06" + b"\xff" * 18  # a fake record whose pointers are nonsense
    assert check_file(str(q))[0]


def pg_dump(db: Database, out: Path, *args: str) -> Path:
    """A real dump: several tables (one with large objects), enough rows for many data chunks."""
    db.sql("create table if not exists events as select i, md5(i::text) as payload "
           "from generate_series(1, 60000) as i")
    db.sql("create table if not exists notes as select i, repeat('note ', i % 50) as body "
           "from generate_series(1, 3000) as i")
    db.sql("select lo_from_bytea(0, convert_to(repeat('large object ', 2000), 'UTF8'))")
    subprocess.run([f"{pg_bindir()}/pg_dump", *args, "-f", str(out), db.dsn], check=True)
    return out


def pg_restore_agrees(path: Path) -> bool:
    return subprocess.run([f"{pg_bindir()}/pg_restore", "-f", "/dev/null", str(path)],
                          capture_output=True).returncode == 0


def copy_cut(src: Path, dst: Path, keep: int) -> Path:
    dst.write_bytes(src.read_bytes()[:keep])
    return dst


def test_pg_dump_custom_archive_cut_to_a_third_is_invalid_as_pg_restore_says(db: Database, tmp: Path) -> None:
    whole = pg_dump(db, tmp / "whole.dump", "-Fc")
    ok, why = check_file(str(whole))
    assert ok and "offsets" in why, why
    assert pg_restore_agrees(whole)
    size = whole.stat().st_size
    for keep in (size // 3, size - 5, size - 1):  # a third; the last block's end marker cut off
        cut = copy_cut(whole, tmp / f"cut-{keep}.dump", keep)
        ok, why = check_file(str(cut))
        assert not ok, (keep, why)
        assert "truncated" in why or "outside the file" in why, why
        assert not pg_restore_agrees(cut)


def test_pg_dump_written_to_a_pipe_is_walked_to_its_end(db: Database, tmp: Path) -> None:
    pg_dump(db, tmp / "unused.dump", "-Fc")
    piped = tmp / "piped.dump"
    with open(piped, "wb") as out:  # `pg_dump -Fc > file` through a pipe: no data offsets in the TOC
        dump = subprocess.Popen([f"{pg_bindir()}/pg_dump", "-Fc", db.dsn], stdout=subprocess.PIPE)
        assert dump.stdout is not None
        subprocess.run(["cat"], stdin=dump.stdout, stdout=out, check=True)
        assert dump.wait() == 0
    ok, why = check_file(str(piped))
    assert ok and "read to the end" in why, why
    assert pg_restore_agrees(piped)
    size = piped.stat().st_size
    for keep in (size // 3, size - 3):
        cut = copy_cut(piped, tmp / f"piped-{keep}.dump", keep)
        ok, why = check_file(str(cut))
        assert not ok and "truncated" in why, (keep, why)
        assert not pg_restore_agrees(cut)


def test_schema_only_custom_dump_is_valid(db: Database, tmp: Path) -> None:
    schema = pg_dump(db, tmp / "schema.dump", "-Fc", "--schema-only")
    assert check_file(str(schema))[0], check_file(str(schema))
    assert pg_restore_agrees(schema)


def test_plain_pg_dump_is_valid_only_with_its_completion_line(db: Database, tmp: Path) -> None:
    plain = pg_dump(db, tmp / "db.sql")
    ok, why = check_file(str(plain))
    assert ok, why
    ok, why = check_file(str(copy_cut(plain, tmp / "half.sql", plain.stat().st_size // 2)))
    assert not ok and "completion line" in why
    other = tmp / "mysql.sql"  # a .sql file that is not pg_dump's is judged by being non-empty
    other.write_text("-- MySQL dump 10.13\nCREATE TABLE t (x int);\n")
    assert check_file(str(other))[0]


def corrupt(path: Path, at: int) -> Path:
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))
    return path


def zip_test_agrees(path: Path) -> bool:
    """`python -m zipfile -t` exits 0 either way; it names a corrupted member on stdout."""
    run = subprocess.run([sys.executable, "-m", "zipfile", "-t", str(path)], capture_output=True, text=True)
    return run.returncode == 0 and "corrupted" not in run.stdout


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_zip_with_corrupt_data_but_an_intact_central_directory(tmp: Path, compression: int) -> None:
    good = make_zip(tmp / "good.zip", 300_000, compression=compression)
    assert check_stream(str(good)) == (True, "zip: every member's CRC-32 matches")
    assert zip_test_agrees(good)
    bad = corrupt(make_zip(tmp / "bad.zip", 300_000, compression=compression), 100_000)
    assert check_file(str(bad))[0]  # the structure is intact: only reading the data finds it
    ok, why = check_stream(str(bad))
    assert not ok and "backup.jsonl" in why, why
    assert not zip_test_agrees(bad)


def backup_set(tmp: Path) -> Path:
    """A backup directory whose last good backup is a day old."""
    d = tmp / "backups"
    d.mkdir()
    age(make_zip(d / "backup-1.zip"), 86400)
    return d


async def test_a_paused_writer_holding_the_file_open_is_in_progress_not_invalid(tmp: Path) -> None:
    d = backup_set(tmp)
    newest = d / "backup-2.zip"
    cfg = f"backups:\n  sysreptor:\n    path: {d}\n    pattern: '*.zip'\n    in_progress: 1m\n"
    with writer(newest, b"PK\x03\x04 first chunk"):
        age(newest, 3600)  # no write for an hour, longer than `in_progress`, the file still open
        assert in_progress(str(newest), quiet_for=60)
        r = (await collect(tmp, cfg))["backups:sysreptor"]
        assert r.up, r.error
        assert value(r, "taskmedic_backup_in_progress") == 1
        assert value(r, "taskmedic_backup_valid") == 1  # backup-1's verdict: the open file is not judged
    # the writer died: the file it left is finished, and broken
    assert not in_progress(str(newest), quiet_for=60)
    r = (await collect(tmp, cfg))["backups:sysreptor"]
    assert value(r, "taskmedic_backup_in_progress") == 0
    assert value(r, "taskmedic_backup_valid") == 0


async def test_a_file_still_growing_between_cycles_is_in_progress(tmp: Path) -> None:
    d = backup_set(tmp)
    growing = d / "backup-2.zip"
    growing.write_bytes(b"PK\x03\x04 first chunk")
    age(growing, 3600)  # each chunk appended by a process that closes the file in between
    collector = BackupCollector("sysreptor", Backup(path=str(d), pattern="*.zip", in_progress=60))
    first = await run_once(collector)
    assert value(first, "taskmedic_backup_in_progress") == 0  # nothing tells yet: judged, and broken
    assert value(first, "taskmedic_backup_valid") == 0
    with open(growing, "ab") as f:
        f.write(b"second chunk")
    age(growing, 3000)
    second = await run_once(collector)
    assert value(second, "taskmedic_backup_in_progress") == 1
    assert value(second, "taskmedic_backup_valid") == 1  # the day-old backup is judged meanwhile
    third = await run_once(collector)  # unchanged since: finished
    assert value(third, "taskmedic_backup_in_progress") == 0
    assert value(third, "taskmedic_backup_valid") == 0


def as_unprivileged_user(fn: Callable[[], object]) -> object:
    """`fn()` in a forked child that runs as `nobody` when we are root (root reads any file), its
    JSON result passed back through a pipe."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read_end)
            if os.geteuid() == 0:
                nobody = pwd.getpwnam("nobody")
                os.setgroups([])
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
            os.write(write_end, json.dumps(fn()).encode())
            code = 0
        except BaseException as e:
            os.write(write_end, json.dumps({"child failed": repr(e)}).encode())
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        result = json.loads(pipe.read())
    os.waitpid(pid, 0)
    return result


def test_an_unreadable_newest_file_is_invalid_and_the_collector_stays_up() -> None:
    d = tempdir("taskmedic-unreadable-")  # /tmp/pytest-of-root is closed to other users
    try:
        age(make_zip(d / "backup-1.zip"), 86400)
        newest = make_zip(d / "backup-2.zip")
        age(newest, 3600)
        newest.chmod(0)
        conf = d / "conf"
        conf.mkdir()
        conf.chmod(0o777)
        cfg = f"backups:\n  sysreptor:\n    path: {d}\n    pattern: '*.zip'\n"

        def judge() -> object:
            logged: list[str] = []
            handler = logging.Handler()
            handler.emit = lambda record: logged.append(record.getMessage())  # type: ignore[method-assign]
            logging.getLogger("taskmedic").addHandler(handler)
            r = asyncio.run(collect(conf, cfg))["backups:sysreptor"]
            return [r.up, value(r, "taskmedic_backup_valid"), value(r, "taskmedic_backup_files"),
                    value(r, "taskmedic_backup_last_valid_timestamp_seconds"), logged]

        result = as_unprivileged_user(judge)
        assert isinstance(result, list), result
        up, valid, files, last_valid, logged = result
        assert (up, valid, files) == (True, 0, 2)
        assert last_valid == pytest.approx((d / "backup-1.zip").stat().st_mtime)
        assert f"backup sysreptor: {newest} is invalid: unreadable: Permission denied" in logged
    finally:
        shutil.rmtree(d)


async def test_verify_data_finds_a_corrupt_member_after_the_first_full_pass(tmp: Path) -> None:
    sets = {}
    for name, damaged in (("broken", True), ("sound", False)):
        d = tmp / name
        d.mkdir()
        newest = make_zip(d / "backup.zip", 400_000)
        if damaged:
            corrupt(newest, 150_000)  # inside the member's data; the central directory is intact
        age(newest, 3600)
        sets[name] = BackupCollector(name, Backup(path=str(d), pattern="*.zip", verify_data=True,
                                                  verify_bytes_per_second=4 * 2**20))
    for collector in sets.values():
        first = await run_once(collector)
        assert first.up, first.error
        # until its first full pass has finished, the structural verdict stands
        assert (value(first, "taskmedic_backup_data_verified"), value(first, "taskmedic_backup_valid")) == (0, 1)
    assert {name: await valid_once_read_through(c) for name, c in sets.items()} == {"broken": 0, "sound": 1}


async def valid_once_read_through(collector: BackupCollector) -> float | None:
    """taskmedic_backup_valid once the background read of the judged file has finished."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r = await run_once(collector)
        assert r.up, r.error
        if value(r, "taskmedic_backup_data_verified") == 1:
            return value(r, "taskmedic_backup_valid")
        await asyncio.sleep(0.1)
    raise AssertionError("the file was not read through within 60 s")


async def test_cut_pg_dump_archives_in_a_backup_set(db: Database, tmp: Path) -> None:
    whole = pg_dump(db, tmp / "whole.dump", "-Fc")
    piped = tmp / "piped.dump"
    with open(piped, "wb") as out:
        dump = subprocess.Popen([f"{pg_bindir()}/pg_dump", "-Fc", db.dsn], stdout=subprocess.PIPE)
        subprocess.run(["cat"], stdin=dump.stdout, stdout=out, check=True)
        assert dump.wait() == 0
    collectors = {}
    for name, source in (("offsets", whole), ("pipe", piped)):
        d = tmp / name
        d.mkdir()
        cut = copy_cut(source, d / "db.dump", source.stat().st_size // 3)
        age(cut, 3600)
        collectors[name] = BackupCollector(name, Backup(path=str(d), pattern="*.dump"))
    # offsets past the end of the file: known from the TOC at once
    first = await run_once(collectors["offsets"])
    assert (value(first, "taskmedic_backup_valid"), value(first, "taskmedic_backup_data_verified")) == (0, 0)
    # no offsets: only reading the blocks to the end tells, in the background
    assert await valid_once_read_through(collectors["pipe"]) == 0
    # a configuration reload builds new collectors: the file is not read again
    reloaded = await run_once(BackupCollector("pipe", collectors["pipe"].backup))
    assert (value(reloaded, "taskmedic_backup_valid"), value(reloaded, "taskmedic_backup_data_verified")) == (0, 1)
