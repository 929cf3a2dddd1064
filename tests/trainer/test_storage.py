"""trainer.storage: one module for paths and URIs (local, file://, s3:// on a real
S3-compatible server on loopback), and the data sources reading through it."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import trainer.storage as storage
from tests.trainer.test_data import COLUMNS, _criteo_line, _ratings_frame
from trainer.data.files import CriteoTSV, Table
from trainer.errors import DataError


def test_join_keeps_the_query_and_refuses_credentials_in_uris(tmp_path):
    assert storage.join("s3://b/p?scheme=http", "runs", "x") == "s3://b/p/runs/x?scheme=http"
    assert storage.join(str(tmp_path), "a") == str(tmp_path / "a")
    with pytest.raises(storage.StorageError, match="AWS_ACCESS_KEY_ID"):
        storage.check_uri("s3://b/p?access_key=AKIA&secret_key=x", "data.path")
    with pytest.raises(storage.StorageError, match="unsupported scheme 'ftp://'"):
        storage.check_uri("ftp://host/x", "data.path")
    with pytest.raises(storage.StorageError, match="no bucket"):
        storage.check_uri("s3:///x")


def test_local_and_file_uris_are_one_place(tmp_path):
    storage.write_text(tmp_path / "a" / "b.txt", "hi")
    assert storage.read_text(f"file://{tmp_path}/a/b.txt") == "hi"
    (tmp_path / "d" / "day=1").mkdir(parents=True)
    for n in ("p1.parquet", "p0.parquet", "x.txt"):
        (tmp_path / "d" / "day=1" / n).write_text("")
    assert storage.glob(f"{tmp_path}/d/day=1/*.parquet") == [
        f"{tmp_path}/d/day=1/p0.parquet",
        f"{tmp_path}/d/day=1/p1.parquet",
    ]
    assert storage.ray_storage(f"file://{tmp_path}") == (str(tmp_path), None)


def test_s3_read_write_glob_and_ray_storage(s3_env):
    root = s3_env.make_bucket("st-basic")
    storage.write_text(storage.join(root, "runs", "j1", "results.json"), "{}")
    assert storage.exists(f"{root}/runs/j1/results.json") and not storage.exists(f"{root}/runs/j2")
    assert storage.read_text(f"{root}/runs/j1/results.json") == "{}"
    assert storage.glob(f"{root}/*/*/results.json") == [f"{root}/runs/j1/results.json"]
    path, fs = storage.ray_storage(f"{root}/ckpt")
    assert path == "st-basic/ckpt" and fs.type_name == "s3"
    with pytest.raises(storage.StorageError, match="does not exist"):
        storage.read_text(f"{root}/nope")


def test_parquet_days_and_criteo_tsv_read_from_s3(s3_env):
    root = s3_env.make_bucket("st-data")
    df = _ratings_frame()
    # two files for day 0, one for day 1: a {day} pattern with a wildcard
    for day, parts in ((0, [df[df.day == 0].iloc[:2], df[df.day == 0].iloc[2:]]), (1, [df[df.day == 1]])):
        for i, part in enumerate(parts):
            buf = pa.BufferOutputStream()
            pq.write_table(pa.Table.from_pandas(part, preserve_index=False), buf)
            storage.write_bytes(f"{root}/ratings/day={day}/part-{i}.parquet", buf.getvalue().to_pybytes())
    t = Table(f"{root}/ratings/day={{day}}/*.parquet", COLUMNS)
    d0 = list(t.read_day(0))
    assert [len(c) for c in d0] == [2, 1]
    assert np.concatenate([c.label for c in d0]).tolist() == [1.0, 0.0, 1.0]
    assert sum(len(c) for c in t.read_day(1)) == 3
    with pytest.raises(DataError, match=r"no file matches .*day=5.*\(day 5\)"):
        list(t.read_day(5))

    rows = [_criteo_line(1, list(range(13)), ["68fd1e64"] * 26), _criteo_line(0, [None] * 13, [None] * 26)]
    storage.write_text(f"{root}/criteo/day_0.tsv", "\n".join(rows) + "\n")
    (chunk,) = list(CriteoTSV(f"{root}/criteo/day_{{day}}.tsv").read_day(0))
    assert chunk.label.tolist() == [1.0, 0.0] and chunk.dense.shape == (2, 13)
    with pytest.raises(DataError, match="does not exist"):
        list(CriteoTSV(f"{root}/criteo/day_{{day}}.tsv").read_day(1))


def test_local_table_with_a_day_glob(tmp_path):
    df = _ratings_frame()
    for day in (0, 1):
        (tmp_path / f"day={day}").mkdir()
        df[df.day == day].to_parquet(tmp_path / f"day={day}" / "a.parquet")
    t = Table(f"{tmp_path}/day={{day}}/*.parquet", COLUMNS)
    assert sum(len(c) for c in t.read_day(1)) == 3
