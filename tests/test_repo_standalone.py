"""The repository stands alone: no tracked file names the team's notebook outside it."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# built from parts so this file does not match itself
FORBIDDEN = ["../" + "shared", "STACK" + ".md", "DESIGN" + ".md", "STYLE" + ".md", "seeds" + "/"]


def test_no_tracked_file_names_a_document_outside_the_repo():
    files = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    hits = []
    for name in files:
        path = REPO / name
        if not path.is_file() or path.suffix in {".png", ".whl", ".gz", ".zst"}:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for bad in FORBIDDEN:
            if bad in text:
                hits.append(f"{name}: {bad}")
    assert not hits, "move what a reader needs into docs/ and point there:\n" + "\n".join(hits)
