"""Is a backup file complete? Judged from its structure, reading O(1) bytes where possible.

- zip: the end-of-central-directory record (and ZIP64 record) at the tail must be present and
  point at a central directory that starts with its signature. A zip whose writer died before
  the central directory was flushed (the SysReptor case) fails here, whatever its size.
- tar: an archive ends with two 512-byte zero blocks.
- gzip (and .tar.gz): magic at the head; the stream is verified once by a streaming
  decompress (constant memory) and the verdict is cached by (size, mtime).
- pg_dump custom format: `PGDMP` magic and a known version header.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import BinaryIO, Literal

Verdict = tuple[bool, str]
Kind = Literal["zip", "gzip", "tar", "pgdump", "unknown"]

_EOCD = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_EOCD = b"PK\x06\x06"
_CENTRAL = b"PK\x01\x02"
_EOCD_MIN = 22
_MAX_COMMENT = 0xFFFF


def sniff(head: bytes) -> Kind:
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"PGDMP"):
        return "pgdump"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return "unknown"


def _read_at(f: BinaryIO, offset: int, n: int) -> bytes:
    f.seek(offset)
    return f.read(n)


def check_zip(f: BinaryIO, size: int) -> Verdict:
    """Valid when an end-of-central-directory record near the tail points at a central
    directory that is there. Candidates are tried from the last one back, since a comment (or
    compressed data) may contain the record's signature; bytes after the comment are tolerated,
    as zipfile does."""
    if size < _EOCD_MIN:
        return False, "zip: shorter than an end-of-central-directory record"
    tail_len = min(size, _EOCD_MIN + _MAX_COMMENT)
    tail = _read_at(f, size - tail_len, tail_len)
    verdict: Verdict = (False, "zip: no end-of-central-directory record (truncated or still being written)")
    pos = tail.rfind(_EOCD, 0, len(tail) - _EOCD_MIN + 4)
    while pos != -1:
        comment_len = struct.unpack_from("<H", tail, pos + 20)[0]
        if pos + _EOCD_MIN + comment_len <= len(tail):
            verdict = _central_directory(f, tail, pos, size - tail_len + pos)
            if verdict[0]:
                return verdict
        pos = tail.rfind(_EOCD, 0, pos)
    return verdict


def _central_directory(f: BinaryIO, tail: bytes, pos: int, eocd_at: int) -> Verdict:
    _, _, _, _, _, cd_size, cd_offset, _ = struct.unpack_from("<4sHHHHIIH", tail, pos)
    if cd_offset == 0xFFFFFFFF or cd_size == 0xFFFFFFFF:
        if eocd_at < 20:
            return False, "zip: ZIP64 markers without a ZIP64 locator"
        locator = _read_at(f, eocd_at - 20, 20)
        if not locator.startswith(_ZIP64_LOCATOR):
            return False, "zip: ZIP64 markers without a ZIP64 locator"
        record_at = struct.unpack_from("<Q", locator, 8)[0]
        record = _read_at(f, record_at, 56)
        if len(record) < 56 or not record.startswith(_ZIP64_EOCD):
            return False, "zip: ZIP64 end-of-central-directory record missing"
        cd_size, cd_offset = struct.unpack_from("<QQ", record, 40)
        eocd_at = record_at
    if cd_offset + cd_size > eocd_at:
        return False, "zip: central directory points past the end of the file"
    if cd_size and _read_at(f, cd_offset, 4) != _CENTRAL:
        return False, "zip: no central directory where the end record says it starts"
    return True, "zip: central directory complete"


def check_tar(f: BinaryIO, size: int) -> Verdict:
    if size < 1024 or size % 512:
        return False, "tar: size is not a whole number of 512-byte blocks"
    if _read_at(f, size - 1024, 1024) != b"\0" * 1024:
        return False, "tar: no end-of-archive blocks"
    return True, "tar: end-of-archive present"


class _GzipMembers:
    """Feeds a gzip file through zlib member by member (gzip allows several concatenated
    members); zero bytes after the last member are padding, as gzip(1) treats them."""

    def __init__(self) -> None:
        self.member = zlib.decompressobj(wbits=31)
        self.padding = False

    def feed(self, data: bytes) -> None:
        while data:
            if self.padding:
                if data.strip(b"\0"):
                    raise zlib.error("data after the zero padding that ends the stream")
                return
            self.member.decompress(data, 0)
            while self.member.unconsumed_tail:
                self.member.decompress(self.member.unconsumed_tail, 0)
            data = self.member.unused_data if self.member.eof else b""
            if data:
                if not data.strip(b"\0"):
                    self.padding = True
                    return
                self.member = zlib.decompressobj(wbits=31)

    @property
    def complete(self) -> bool:
        return self.padding or self.member.eof


def check_gzip_stream(f: BinaryIO, chunk: int = 1 << 20) -> Verdict:
    """Decompress the whole stream in constant memory; only run once per file version."""
    f.seek(0)
    members = _GzipMembers()
    while data := f.read(chunk):
        try:
            members.feed(data)
        except zlib.error as e:
            return False, f"gzip: corrupt stream ({e})"
    if not members.complete:
        return False, "gzip: stream ends before its trailer (truncated)"
    return True, "gzip: stream and trailer complete"


def check_pgdump(f: BinaryIO, size: int) -> Verdict:
    head = _read_at(f, 0, 16)
    if len(head) < 11 or not head.startswith(b"PGDMP"):
        return False, "pg_dump: no PGDMP header"
    major, minor = head[5], head[6]
    if major != 1 or minor < 10:
        return False, f"pg_dump: unknown archive version {major}.{minor}"
    return True, f"pg_dump: custom format {major}.{minor} header"


_BY_NAME: dict[str, Kind] = {".zip": "zip", ".gz": "gzip", ".tgz": "gzip", ".tar": "tar", ".dump": "pgdump",
                             ".pgdump": "pgdump"}


def expected_kind(path: str) -> Kind:
    """What a file's name promises: `backup.zip` had better be a zip."""
    return _BY_NAME.get(os.path.splitext(path)[1].lower(), "unknown")


# path → ((size, mtime), verdict): a gzip stream is decompressed once per version of a file.
_gzip_cache: dict[str, tuple[tuple[int, float], Verdict]] = {}
_GZIP_CACHE_SIZE = 256


def check_file(path: str) -> Verdict:
    """The verdict for one finished file; unknown formats are judged by being non-empty."""
    st = os.stat(path)
    with open(path, "rb") as f:
        head = f.read(512)
        kind = sniff(head)
        if expected_kind(path) not in ("unknown", kind) and kind != "unknown":
            return False, f"named like {expected_kind(path)} but is {kind}"
        if kind == "zip":
            return check_zip(f, st.st_size)
        if kind == "tar":
            return check_tar(f, st.st_size)
        if kind == "pgdump":
            return check_pgdump(f, st.st_size)
        if kind == "gzip":
            version = (st.st_size, st.st_mtime)
            cached = _gzip_cache.get(path)
            if cached is None or cached[0] != version:
                cached = (version, check_gzip_stream(f))
                _gzip_cache.pop(path, None)
                _gzip_cache[path] = cached
                while len(_gzip_cache) > _GZIP_CACHE_SIZE:  # forget the least recently checked
                    del _gzip_cache[next(iter(_gzip_cache))]
            return cached[1]
    if st.st_size == 0:
        return False, "empty file"
    promised = expected_kind(path)
    if promised != "unknown":
        return False, f"named like {promised} but does not start like one"
    return True, "unknown format: non-empty"
