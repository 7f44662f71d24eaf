"""Offline tests of normrepro.download against a local HTTP server and hand-built archives."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest
from http_download_fixtures import (  # http_server: a fixture of conftest.py
    closed_port_url,
    md5,
    sha256,
    tar_bytes,
    tiny_iwslt_tgz,
)

from normrepro.download import (
    ChecksumError,
    DataError,
    DownloadError,
    UnsafeArchiveError,
    download,
    file_digest,
    safe_extract,
    verify_checksum,
)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------------------------- download


def test_download_verifies_and_lands(http_server, tmp_path):
    data = tiny_iwslt_tgz()
    url = http_server.put("de-en.tgz", data)
    dest = tmp_path / "raw" / "de-en.tgz"
    got = download(url, dest, md5=md5(data), sha256=sha256(data))
    assert got == dest
    assert dest.read_bytes() == data
    assert _leftovers(dest.parent) == []


def test_download_skips_existing_good_file(http_server, tmp_path):
    data = b"already here"
    dest = tmp_path / "f.bin"
    dest.write_bytes(data)
    # The URL would 404: a request would fail, so passing proves no request was made.
    download(f"{http_server.url}/missing", dest, sha256=sha256(data))
    assert http_server.requests == []


def test_download_replaces_existing_bad_file(http_server, tmp_path):
    data = b"the real content"
    url = http_server.put("f.bin", data)
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"stale")
    download(url, dest, md5=md5(data))
    assert dest.read_bytes() == data


def test_corrupted_download_raises_and_leaves_nothing(http_server, tmp_path):
    good = tiny_iwslt_tgz()
    corrupted = bytearray(good)
    corrupted[len(corrupted) // 2] ^= 0xFF
    url = http_server.put("de-en.tgz", bytes(corrupted))
    dest = tmp_path / "de-en.tgz"
    with pytest.raises(ChecksumError) as err:
        download(url, dest, md5=md5(good))
    msg = str(err.value)
    assert "de-en.tgz" in msg and md5(good) in msg and md5(bytes(corrupted)) in msg
    assert "download it again" in msg and "different release" in msg
    assert not dest.exists()
    assert _leftovers(tmp_path) == []


def test_corrupted_download_removes_stale_file(http_server, tmp_path):
    url = http_server.put("f.bin", b"served but wrong")
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"old and wrong")
    with pytest.raises(ChecksumError):
        download(url, dest, sha256=sha256(b"expected"))
    assert not dest.exists()


def test_http_404_raises_download_error(http_server, tmp_path):
    dest = tmp_path / "x.tgz"
    url = f"{http_server.url}/nope.tgz"
    with pytest.raises(DownloadError) as err:
        download(url, dest, md5="0" * 32, offline_hint="use --source instead")
    assert "404" in str(err.value) and url in str(err.value)
    assert "use --source instead" in str(err.value)
    assert not dest.exists() and _leftovers(tmp_path) == []


def test_unreachable_host_raises_download_error(tmp_path):
    url = closed_port_url("a.tgz")
    with pytest.raises(DownloadError, match="cannot fetch"):
        download(url, tmp_path / "a.tgz", md5="0" * 32, timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_truncated_transfer_raises_download_error(http_server, tmp_path):
    with pytest.raises(DownloadError):
        download(f"{http_server.url}/truncated/x", tmp_path / "x", timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_file_digest_and_verify_checksum(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc" * 1000)
    assert file_digest(path) == sha256(b"abc" * 1000)
    assert file_digest(path, "md5") == md5(b"abc" * 1000)
    got = verify_checksum(path, sha256=sha256(b"abc" * 1000), md5=md5(b"abc" * 1000).upper())
    assert got["md5"] == md5(b"abc" * 1000)
    with pytest.raises(ChecksumError, match="expected"):
        verify_checksum(path, md5=md5(b"other"))
    with pytest.raises(ValueError):
        verify_checksum(path)


# -------------------------------------------------------------------------------- extraction


def test_safe_extract_tgz(tmp_path):
    archive = tmp_path / "de-en.tgz"
    archive.write_bytes(tiny_iwslt_tgz())
    target = tmp_path / "out"
    files = safe_extract(archive, target)
    assert (target / "de-en" / "train.tags.de-en.de").read_bytes().startswith(b"<url>")
    assert target / "de-en" / "IWSLT14.TED.tst2012.de-en.en.xml" in files
    assert all(p.is_file() for p in files)
    assert _leftovers(tmp_path) == []


def test_safe_extract_replaces_previous_extraction(tmp_path):
    target = tmp_path / "out"
    a = tmp_path / "a.tar"
    a.write_bytes(tar_bytes({"d/old.txt": b"old", "d/keep.txt": b"1"}, mode="w"))
    safe_extract(a, target)
    b = tmp_path / "b.tar"
    b.write_bytes(tar_bytes({"d/keep.txt": b"2"}, mode="w"))
    safe_extract(b, target)
    assert sorted(p.name for p in (target / "d").iterdir()) == ["keep.txt"]
    assert (target / "d" / "keep.txt").read_bytes() == b"2"
    assert _leftovers(target) == []


def test_safe_extract_zip(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("pkg/data/x.txt", "hello")
        zf.writestr("top.txt", "t")
    files = safe_extract(archive, tmp_path / "out")
    assert files == sorted([tmp_path / "out" / "pkg/data/x.txt", tmp_path / "out" / "top.txt"])
    assert (tmp_path / "out" / "pkg/data/x.txt").read_text() == "hello"


def test_symlink_inside_target_is_allowed(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("d/real.txt")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"ok"))
        link = tarfile.TarInfo("d/link.txt")
        link.type = tarfile.SYMTYPE
        link.linkname = "real.txt"
        tf.addfile(link)
    archive = tmp_path / "a.tar"
    archive.write_bytes(buf.getvalue())
    safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "d" / "link.txt").read_bytes() == b"ok"


def _tar_with(members: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for m in members:
            if isinstance(m, tuple):
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tf.addfile(info, io.BytesIO(m[1]))
            else:
                tf.addfile(m)
    return buf.getvalue()


def _link(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _device(name):
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    return info


UNSAFE_TARS = {
    "dotdot": [("ok.txt", b"fine"), ("../evil", b"pwned")],
    "dotdot_nested": [("ok.txt", b"fine"), ("a/b/../../../evil", b"pwned")],
    "absolute": [("ok.txt", b"fine"), ("/tmp/normrepro-evil", b"pwned")],
    "symlink_out": [("ok.txt", b"fine"), _link("escape", "../..")],
    "symlink_absolute": [("ok.txt", b"fine"), _link("escape", "/etc")],
    "symlink_then_write": [_link("d", "."), _link("d/up", ".."), ("d/up/evil", b"pwned")],
    "symlink_chain": [("x/y/f", b"1"), _link("a", "x/y"), _link("b", "a/../../..")],
    # Looks inside when normalised as text ("a/.." -> "."), but `a` is "." so it is the parent.
    "symlink_dot_chain": [_link("a", "."), _link("b", "a/..")],
    "hardlink_out": [("ok.txt", b"fine"), _link("h", "../outside", tarfile.LNKTYPE)],
    "device": [("ok.txt", b"fine"), _device("dev/null")],
}


@pytest.mark.parametrize("stdlib_filter", [True, False], ids=["with-data-filter", "own-checks-only"])
@pytest.mark.parametrize("case", sorted(UNSAFE_TARS))
def test_unsafe_tar_extracts_nothing(tmp_path, monkeypatch, case, stdlib_filter):
    if not stdlib_filter:
        # Our own pre-checks must suffice on Pythons without PEP 706's tar filter.
        monkeypatch.setattr("normrepro.download._tar_data_filter", lambda: None)
    work = tmp_path / "work"
    work.mkdir()
    archive = work / "bad.tgz"
    archive.write_bytes(_tar_with(UNSAFE_TARS[case]))
    target = work / "target"
    with pytest.raises(UnsafeArchiveError, match="refusing|outside|device|absolute"):
        safe_extract(archive, target)
    assert not target.exists()
    assert sorted(p.name for p in work.iterdir()) == ["bad.tgz"]  # no staging dir left
    assert not (tmp_path / "evil").exists()
    assert not Path("/tmp/normrepro-evil").exists()


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "a/../../evil.txt", "C:/evil"])
def test_unsafe_zip_extracts_nothing(tmp_path, name):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", "fine")
        info = zipfile.ZipInfo("placeholder")
        info.filename = name  # ZipInfo's constructor would sanitise the name
        zf.writestr(info, "pwned")
    target = tmp_path / "target"
    with pytest.raises(UnsafeArchiveError):
        safe_extract(archive, target)
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zip"]


def test_zip_symlink_pointing_out_is_refused(tmp_path):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "../../etc")
    with pytest.raises(UnsafeArchiveError):
        safe_extract(archive, tmp_path / "t")


def test_corrupt_and_unknown_archives(tmp_path):
    bad = tmp_path / "x.tgz"
    bad.write_bytes(tiny_iwslt_tgz()[:200])
    with pytest.raises(DataError, match="not a readable tar"):
        safe_extract(bad, tmp_path / "t")
    other = tmp_path / "x.bin"
    other.write_bytes(b"plain bytes")
    with pytest.raises(ValueError, match="not a .tar"):
        safe_extract(other, tmp_path / "t")
    assert not (tmp_path / "t").exists()
    assert not any(p.name.startswith(".t.extract") for p in tmp_path.iterdir())
