"""The repository's metadata agrees with itself: LICENSE and CITATION.cff with pyproject.toml,
and CITATION.cff cites every replicated paper (from each replication's paper.yaml)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def test_license_file_is_the_license_pyproject_declares():
    project = _project()
    license_name = project["license"]  # an SPDX expression (PEP 639), not the deprecated table
    assert project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").splitlines()[0] == f"{license_name} License"


def test_citation_matches_pyproject_and_cites_every_replicated_paper():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    project = _project()
    assert cff["cff-version"] == "1.2.0"
    assert str(cff["version"]) == project["version"]
    assert cff["license"] == project["license"]
    cited = {ref["url"] for ref in cff["references"]}
    for paper_yaml in sorted(ROOT.glob("replications/*/paper.yaml")):
        url = yaml.safe_load(paper_yaml.read_text(encoding="utf-8"))["paper"]["url"]
        assert url in cited, f"CITATION.cff does not cite {paper_yaml.parent.name}'s paper {url}"
