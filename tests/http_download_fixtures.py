"""Shared test helpers for the download/fetch tests: a local HTTP server and tiny archives.

Everything here is offline: the server listens on 127.0.0.1 on an ephemeral port, in a thread,
and serves a temporary folder, so the download code is exercised over real HTTP without the
internet. Archive builders write small files in the real formats (gzip IDX, IWSLT's de-en.tgz).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import struct
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path.startswith("/truncated/"):
            # Promise more bytes than are sent, then hang up: a dropped connection.
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"x" * 100)
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


class LocalServer:
    def __init__(self, root: Path):
        self.root = root
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.requests = []
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def requests(self) -> list[str]:
        return self.httpd.requests

    def put(self, rel: str, data: bytes) -> str:
        """Serve `data` at `rel`; return its URL."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return f"{self.url}/{rel}"


@pytest.fixture
def http_server(tmp_path_factory):
    server = LocalServer(tmp_path_factory.mktemp("www"))
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


def closed_port_url(name: str = "x") -> str:
    """A URL on 127.0.0.1 where nothing listens (port bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tar_bytes(members: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def tiny_idx_gz(n: int = 3, seed: int = 0) -> dict[str, bytes]:
    """The four Fashion-MNIST files in the real gzip-IDX format, with `n` 28x28 images each."""
    def images(k):
        body = bytes((seed + i) % 256 for i in range(k * 28 * 28))
        return struct.pack(">IIII", 2051, k, 28, 28) + body

    def labels(k):
        return struct.pack(">II", 2049, k) + bytes(i % 10 for i in range(k))

    raw = {
        "train-images-idx3-ubyte.gz": images(n),
        "train-labels-idx1-ubyte.gz": labels(n),
        "t10k-images-idx3-ubyte.gz": images(n - 1),
        "t10k-labels-idx1-ubyte.gz": labels(n - 1),
    }
    out = {}
    for name, data in raw.items():
        buf = io.BytesIO()
        # Like the official files: original name stored in the header, a fixed timestamp.
        with gzip.GzipFile(filename=name[:-3], mode="wb", fileobj=buf, mtime=1504176606) as gz:
            gz.write(data)
        out[name] = buf.getvalue()
    return out


IWSLT_MEMBERS = ["de-en/train.tags.de-en.de", "de-en/train.tags.de-en.en"] + [
    f"de-en/IWSLT14.{p}.de-en.{lang}.xml"
    for p in ("TED.dev2010", "TEDX.dev2012", "TED.tst2010", "TED.tst2011", "TED.tst2012")
    for lang in ("de", "en")
]


def tiny_iwslt_tgz() -> bytes:
    members = {}
    for name in IWSLT_MEMBERS:
        if name.endswith(".xml"):
            members[name] = b'<refset>\n<seg id="1"> Hallo Welt . </seg>\n</refset>\n'
        else:
            members[name] = b"<url>http://www.ted.com/talks/x</url>\nHallo Welt .\n"
    members["de-en/README"] = b"tiny stand-in for IWSLT14 de-en\n"
    return tar_bytes(members)
