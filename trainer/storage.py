"""Where runs, checkpoints, results and data live: local paths and URIs, in one place.

A location is a local path (``/mnt/shared/rectrain``, ``runs/x``), a ``file://`` URI or
an object-store URI that ``pyarrow.fs`` understands (``s3://bucket/prefix``; S3-compatible
servers through ``?endpoint_override=host:port&scheme=http``, or the ``AWS_ENDPOINT_URL``
variable; ``gs://`` where pyarrow was built with GCS). Credentials come from the
environment only (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``,
an instance or pod role, a Kubernetes Secret exposed as those variables): a URI that
carries keys in its query string is refused, so keys never land in a spec, a log or
the job store.

``RECTRAIN_STORAGE_URI`` names the root under which every job gets its own directory
(``<root>/runs/<job id or run name>``): Ray Train's storage (checkpoints) and a copy of
``spec.yaml`` and ``results.json``. Unset, each run keeps everything in its local run
directory — fine on one machine, refused (see
:func:`trainer.shared_storage.check_shared`) when Ray workers run on other nodes.

Torch-free: the control plane imports it too.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import parse_qsl, unquote, urlsplit

from trainer.errors import RectrainError

if TYPE_CHECKING:
    import pyarrow.fs as pafs

ENV_STORAGE_URI = "RECTRAIN_STORAGE_URI"
_SECRET_PARAMS = {"access_key", "secret_key", "session_token", "aws_access_key_id", "aws_secret_access_key"}
_GLOB_CHARS = "*?["


class StorageError(RectrainError):
    """A location that cannot be used (bad URI, missing file, unreachable store)."""


def is_uri(location: str) -> bool:
    return "://" in str(location)


def is_local(location: str | Path) -> bool:
    """True for plain paths and ``file://`` URIs."""
    s = str(location)
    return not is_uri(s) or s.startswith("file://")


def _split(location: str) -> tuple[str, str]:
    """``s3://b/p?x=1`` -> (``s3://b/p``, ``?x=1``)."""
    base, sep, query = location.partition("?")
    return base, (sep + query if sep else "")


def check_uri(location: str, field: str = "location") -> str:
    """Refuse URIs with credentials in them or an unknown scheme; return the location."""
    s = str(location)
    if not is_uri(s):
        return s
    parts = urlsplit(s)
    if parts.scheme not in ("file", "s3", "gs", "gcs", "hdfs", "abfs", "abfss"):
        raise StorageError(
            f"{field}: unsupported scheme '{parts.scheme}://' in {s!r} (use a path, file:// or s3://)"
        )
    keys = {k.lower() for k, _ in parse_qsl(parts.query)}
    if keys & _SECRET_PARAMS or parts.password or parts.username:
        raise StorageError(
            f"{field}: credentials do not belong in a URI; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY in the environment (a Kubernetes Secret) instead"
        )
    if parts.scheme != "file" and not parts.netloc:
        raise StorageError(f"{field}: {s!r} names no bucket (expected {parts.scheme}://bucket/prefix)")
    return s


def canonical(location: str | Path, *, relative_ok: bool = True) -> str:
    """The one normal form of a location; every check that compares locations (data
    roots, job storage, ownership) compares these, never the spelling a user gave.

    - ``file:///p`` and ``file://localhost/p`` become the local path ``/p`` (percent-escapes
      decoded); a ``file://`` URI naming another host is refused;
    - a local path is made absolute and resolved like :func:`os.path.realpath`: every
      symlink, ``.`` and ``..`` (after the symlinks, as the kernel does), repeated and
      trailing slashes; ``relative_ok=False`` refuses a relative path (it would depend on
      the current directory);
    - an object-store URI keeps its scheme (lower-cased), its bucket (lower-cased) and its
      query; its key loses ``.``/``..`` segments (never above the bucket), repeated and
      trailing slashes.

    Case that the filesystem folds (macOS, Windows shares) is not rewritten here:
    :func:`within` compares the directories themselves (device and inode) for that.
    Raises :class:`StorageError` for what cannot be a location.
    """
    s = str(location)
    if "\x00" in s:
        raise StorageError("a location cannot contain a NUL character")
    scheme, sep, rest = s.partition("://")
    if sep and scheme and scheme.replace("+", "").isalnum():
        scheme = scheme.lower()
        if scheme == "file":
            parts = urlsplit(s)
            if parts.netloc not in ("", "localhost"):
                raise StorageError(f"file:// URI with a host ({parts.netloc}) is not a local path")
            s = unquote(parts.path)
            if not s.startswith("/"):
                raise StorageError("a file:// URI needs an absolute path (file:///dir)")
        else:
            base, query = _split(rest)
            bucket, _, key = base.partition("/")
            if not bucket:
                raise StorageError(f"{scheme}:// URI without a bucket")
            key = posixpath.normpath("/" + key).lstrip("/") if key else ""
            out = f"{scheme}://{bucket.lower()}" + (f"/{key}" if key else "")
            return out + query
    if not os.path.isabs(s) and not relative_ok:
        raise StorageError(f"{s!r} is a relative path; give an absolute path or a URI")
    return os.path.realpath(s)


def canonical_spelling(location: str | Path) -> str:
    """A local location's path as written (``file://`` removed, made absolute, ``.``,
    repeated and trailing slashes dropped) without following symlinks or ``..`` through
    them: equal to :func:`canonical` exactly when nothing on the path is a symlink."""
    s = str(location)
    if s.lower().startswith("file://"):
        parts = urlsplit(s)
        s = unquote(parts.path)
    return os.path.normpath(os.path.abspath(s)) if ".." not in s.split("/") else s


def within(location: str, root: str) -> bool:
    """Is ``location`` (canonical) ``root`` (canonical) or inside it? Local paths also
    match by identity (device and inode of ``root`` against each existing ancestor of
    ``location``), so a spelling in another case on a case-folding filesystem is caught."""
    if location == root:
        return True
    if "://" in root or "://" in location:
        if "://" not in root or "://" not in location:
            return False
        lb, lq = _split(location)
        rb, rq = _split(root)
        return lb == rb or lb.startswith(rb.rstrip("/") + "/")
    if location.startswith(root.rstrip(os.sep) + os.sep):
        return True
    try:
        rst = os.stat(root)
    except OSError:
        return False
    p = location
    while True:
        try:
            if os.path.samestat(os.stat(p), rst):
                return True
        except OSError:
            pass
        parent = os.path.dirname(p)
        if parent == p:
            return False
        p = parent


def join(location: str | Path, *parts: str) -> str:
    """Append path parts to a path or URI (a URI's query string stays at the end)."""
    s = str(location)
    if not is_uri(s):
        return str(Path(s, *parts))
    base, query = _split(s)
    return posixpath.join(base.rstrip("/"), *parts) + query


_ENV_KEYS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_REGION", "AWS_PROFILE")


@lru_cache(maxsize=32)
def _fs_for(base_key: str, env_key: tuple) -> "pafs.FileSystem":  # noqa: ARG001 (cache key)
    import pyarrow.fs as pafs

    fs, _ = pafs.FileSystem.from_uri(base_key)
    return fs


def resolve(location: str | Path) -> tuple["pafs.FileSystem", str]:
    """The ``pyarrow.fs`` filesystem and the path inside it for a location."""
    import pyarrow.fs as pafs

    s = str(location)
    if not is_uri(s):
        return pafs.LocalFileSystem(), str(Path(s).absolute())
    check_uri(s)
    if s.startswith("file://"):
        return pafs.LocalFileSystem(), urlsplit(s).path
    base, query = _split(s)
    parts = urlsplit(base)
    try:
        # one filesystem per bucket + options (the path below it varies)
        fs = _fs_for(f"{parts.scheme}://{parts.netloc}{query}", tuple(os.environ.get(k) for k in _ENV_KEYS))
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError with a good text
        raise StorageError(f"cannot open {s!r}: {e}") from e
    return fs, f"{parts.netloc}{parts.path}".rstrip("/")


def ray_storage(location: str | Path) -> tuple[str, "pafs.FileSystem | None"]:
    """``(storage_path, storage_filesystem)`` for ``ray.train.RunConfig``."""
    s = str(location)
    if is_local(s):
        return resolve(s)[1], None
    fs, path = resolve(s)
    return path, fs


def exists(location: str | Path) -> bool:
    import pyarrow.fs as pafs

    fs, path = resolve(location)
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except OSError as e:
        raise StorageError(f"cannot reach {location}: {e}") from e


def makedirs(location: str | Path) -> None:
    fs, path = resolve(location)
    fs.create_dir(path, recursive=True)


def write_bytes(location: str | Path, data: bytes) -> None:
    """Write a whole file (local: through a temp file and a rename)."""
    s = str(location)
    if is_local(s):
        p = Path(resolve(s)[1])
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(p)
        return
    fs, path = resolve(s)
    try:
        with fs.open_output_stream(path) as f:
            f.write(data)
    except OSError as e:
        raise StorageError(f"cannot write {s}: {e}") from e


def write_text(location: str | Path, text: str) -> None:
    write_bytes(location, text.encode())


def read_bytes(location: str | Path) -> bytes:
    fs, path = resolve(location)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise StorageError(f"{location} does not exist") from None
    except OSError as e:
        raise StorageError(f"cannot read {location}: {e}") from e


def read_text(location: str | Path) -> str:
    return read_bytes(location).decode()


def open_input_file(location: str | Path) -> BinaryIO:
    """A seekable file (Parquet needs random access)."""
    fs, path = resolve(location)
    try:
        return fs.open_input_file(path)
    except FileNotFoundError:
        raise StorageError(f"{location} does not exist") from None
    except OSError as e:
        raise StorageError(f"cannot read {location}: {e}") from e


def has_glob(location: str) -> bool:
    return any(c in _split(str(location))[0] for c in _GLOB_CHARS)


def glob(pattern: str | Path) -> list[str]:
    """Files matching a pattern whose wildcards (``*``, ``?``, ``[...]``) may sit in any
    component; sorted. Returned in the pattern's own form (path or URI)."""
    import pyarrow.fs as pafs

    s = str(pattern)
    base, query = _split(s)
    comps = base.split("/")
    first = next(i for i, c in enumerate(comps) if any(ch in c for ch in _GLOB_CHARS))
    root = "/".join(comps[:first]) or "/"
    fs, root_path = resolve(root + query)
    depth = len(comps) - first
    try:
        infos = fs.get_file_info(pafs.FileSelector(root_path, recursive=depth > 1, allow_not_found=True))
    except OSError as e:
        raise StorageError(f"cannot list {root}: {e}") from e
    want = "/".join(comps[first:])
    out = []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(root_path) :].lstrip("/")
        if rel.count("/") == depth - 1 and fnmatch.fnmatchcase(rel, want):
            out.append(f"{root.rstrip('/')}/{rel}{query}")
    return sorted(out)


def expand(pattern: str, field: str = "data.path") -> list[str]:
    """The files a data location names: a glob, or one file that must exist."""
    check_uri(pattern, field)
    if has_glob(pattern):
        files = glob(pattern)
        if not files:
            raise StorageError(f"{field}: no file matches {pattern}")
        return files
    if not exists(pattern):
        raise StorageError(f"{field}: {pattern} does not exist")
    return [pattern]


def storage_root() -> str | None:
    """``RECTRAIN_STORAGE_URI`` if set (checked), else None."""
    v = os.environ.get(ENV_STORAGE_URI, "").strip()
    return check_uri(v, ENV_STORAGE_URI) if v else None


def job_location(root: str, name: str) -> str:
    """A job's directory under a storage root."""
    return join(root, "runs", name)


def download_dir(location: str | Path, dest: str | Path) -> Path:
    """Copy a directory (a checkpoint) from any location into the local ``dest``; a local
    location is returned as it is (no copy)."""
    import pyarrow.fs as pafs

    s = str(location)
    if is_local(s):
        return Path(resolve(s)[1])
    fs, path = resolve(s)
    Path(dest).mkdir(parents=True, exist_ok=True)
    try:
        pafs.copy_files(path, str(dest), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    except OSError as e:
        raise StorageError(f"cannot download {s}: {e}") from e
    return Path(dest)
