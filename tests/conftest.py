"""Fixtures shared by every test area (tests/<area>/ mirrors src/normrepro/).

`http_server` (a local HTTP server on 127.0.0.1 serving a folder, for the download and fetch
code) is available to every test; the data writers (`data_fixtures`) are imported by name.
"""

from http_download_fixtures import http_server  # noqa: F401  (a fixture, used by name)
