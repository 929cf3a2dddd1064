"""Issue 17, point 1: the data-roots check (local paths after '..' and symlinks,
file:// URIs, s3:// / gs:// prefixes), one refusal text whether or not the file exists."""

from __future__ import annotations

import os

import pytest

from trainer.data_roots import DataPathRefused, check_data_path, parse_roots


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    (root / "team").mkdir(parents=True)
    inside = root / "team" / "clicks.csv"
    inside.write_text("label,day,u\n1,0,a\n")
    outside = tmp_path / "other-tenant.csv"
    outside.write_text("label,day,u\n1,0,b\n")
    (root / "link.csv").symlink_to(outside)
    (root / "linkdir").symlink_to(tmp_path)
    return root, inside, outside


def _refusal(path, roots) -> str:
    with pytest.raises(DataPathRefused) as e:
        check_data_path(path, roots)
    return e.value.message


def test_local_paths_inside_pass_and_escapes_are_refused(tree, tmp_path):
    root, inside, outside = tree
    roots = [str(root)]
    assert check_data_path(str(inside), roots) == str(inside)
    assert check_data_path(f"file://{inside}", roots) == str(inside)
    assert check_data_path(str(root / "team" / "day_{day}.csv"), roots)  # a pattern inside
    escapes = [
        str(outside),  # absolute, outside
        str(root / "team" / ".." / ".." / outside.name),  # '..'
        str(root / "link.csv"),  # a symlink inside pointing outside
        str(root / "linkdir" / outside.name),  # a symlinked directory
        f"file://{outside}",  # file:// outside
        f"file://{root}/../{outside.name}",
        "/etc/passwd",
        "team/clicks.csv",  # relative: depends on the cwd, never allowed
        f"file://otherhost{inside}",
    ]
    for p in escapes:
        msg = _refusal(p, roots)
        assert msg.startswith("data.path: ") and str(root) in msg and "RECTRAIN_DATA_ROOTS" in msg, msg


def test_one_text_whether_or_not_the_file_exists(tree, tmp_path):
    root, _inside, outside = tree
    existing = _refusal(str(outside), [str(root)])
    missing = _refusal(str(tmp_path / "nope.csv"), [str(root)])
    assert existing.replace(str(outside), "X") == missing.replace(str(tmp_path / "nope.csv"), "X")


def test_uri_prefixes():
    roots = parse_roots("s3://Bucket/prefix/, gs://other/")
    assert roots == ["s3://bucket/prefix", "gs://other"]
    assert check_data_path("s3://bucket/prefix/day_0.parquet", roots) == "s3://bucket/prefix/day_0.parquet"
    assert check_data_path("s3://bucket/prefix//a/./b.csv", roots) == "s3://bucket/prefix/a/b.csv"
    assert check_data_path("gs://other/x/y.parquet", roots)
    for p in [
        "s3://bucket/prefixed/x.parquet",  # a sibling prefix
        "s3://bucket/prefix/../secret/x.parquet",
        "s3://other-bucket/prefix/x.parquet",
        "gs://bucket/prefix/x.parquet",  # right key, wrong scheme
        "s3://bucket",
    ]:
        assert "data.path" in _refusal(p, roots), p


def test_roots_must_be_absolute_or_uris():
    with pytest.raises(ValueError):
        parse_roots("relative/dir")
    assert parse_roots(f"file://{os.sep}srv{os.sep}data") == [os.path.realpath("/srv/data")]


def test_canonical_is_the_one_normal_form(tmp_path):
    from trainer.storage import StorageError, canonical, within

    real = tmp_path / "a" / "b"
    real.mkdir(parents=True)
    (tmp_path / "ln").symlink_to(real)
    want = str(real.resolve())
    for s in [
        str(real),
        str(real) + "/",
        f"file://{real}",
        f"file://localhost{real}/",
        f"FILE://{tmp_path}/a/./x/../b",
        str(tmp_path / "ln"),
        f"{tmp_path}//a//b//",
    ]:
        assert canonical(s) == want, s
    assert canonical("s3://Bkt/a/./b/../c//?endpoint_override=h:1") == "s3://bkt/a/c?endpoint_override=h:1"
    assert canonical("s3://bkt/../../x") == "s3://bkt/x"
    assert within(want, str(tmp_path.resolve())) and not within(str(tmp_path.resolve()), want)
    assert within("s3://bkt/p/x", "s3://bkt/p") and not within("s3://bkt/px", "s3://bkt/p")
    for bad in ["file://host/etc", "s3:///key", "a\x00b"]:
        with pytest.raises(StorageError):
            canonical(bad)
    with pytest.raises(StorageError, match="relative"):
        canonical("runs/x", relative_ok=False)
