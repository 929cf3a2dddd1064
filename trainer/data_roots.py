"""Allowed data roots: is a spec's ``data.path`` under a prefix the operator allows?

The service refuses, at submit, any data path outside ``RECTRAIN_DATA_ROOTS`` so that a
user cannot train on (and so read) files of other tenants or of the host. ``rectrain
run`` without the service does not call this: a local user reads their own files.

A root is a local directory (``/srv/data``, ``file:///srv/data``) or a URI prefix
(``s3://bucket/prefix/``, ``gs://bucket/``). A path is allowed when, after
normalisation, it lies inside a root:

- local paths (and ``file://`` URIs, turned into local paths) are made absolute and
  resolved (``..`` and every symlink, like ``os.path.realpath``), so neither
  ``root/../etc/passwd`` nor a symlink inside a root pointing outside passes;
- URIs keep their scheme and bucket, and their key is normalised (``..`` and ``.``
  segments, repeated slashes); ``s3://bucket/prefix`` never matches ``s3://bucket/prefixed``.

The refusal is one text whether or not the file exists (no probing for files).
Torch-free, so the control plane and the storage module can use it.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable, Sequence
from urllib.parse import unquote, urlparse

from trainer.errors import SpecError


class DataPathRefused(SpecError):
    """``data.path`` is outside every allowed data root."""


def parse_roots(raw: str | Iterable[str] | None) -> list[str]:
    """``"/srv/data, s3://bucket/x/"`` (comma-separated) or a list -> normalised roots."""
    if raw is None:
        return []
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    out = []
    for item in items:
        item = str(item).strip()
        if not item:
            continue
        out.append(_normalise(item, root=True))
    return out


def _split_uri(path: str) -> tuple[str, str] | None:
    """(scheme, rest) for ``scheme://rest`` URIs, else None (a local path)."""
    scheme, sep, rest = path.partition("://")
    if sep and scheme and scheme.replace("+", "").isalnum():
        return scheme.lower(), rest
    return None


def _normalise(path: str, *, root: bool = False) -> str:
    """A canonical form: a resolved absolute local path, or ``scheme://bucket/key``."""
    uri = _split_uri(path)
    if uri is not None and uri[0] == "file":
        u = urlparse(path)
        if u.netloc not in ("", "localhost"):
            raise ValueError(f"file:// URI with a host ({u.netloc}) is not a local path")
        path, uri = unquote(u.path), None
    if uri is None:
        if not os.path.isabs(path):
            if root:
                raise ValueError(f"data root {path!r} must be an absolute path or a URI")
            return ""  # relative paths are never under a root (they depend on the cwd)
        return os.path.realpath(path)
    scheme, rest = uri
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"{path!r}: a {scheme}:// URI needs a bucket")
    key = posixpath.normpath("/" + key).lstrip("/") if key else ""
    if key.startswith(".."):
        key = ""
    return f"{scheme}://{bucket.lower()}/{key}".rstrip("/") if key else f"{scheme}://{bucket.lower()}"


def _inside(path: str, root: str) -> bool:
    if path == root:
        return True
    sep = "/" if "://" in root else os.sep
    return path.startswith(root.rstrip(sep) + sep)


def check_data_path(path: str, roots: Sequence[str], *, field: str = "data.path") -> str:
    """Return ``path`` normalised if it is under one of ``roots``; else raise
    :class:`DataPathRefused` naming ``field`` and the roots (same text whether or not
    the file exists). ``roots`` as given by :func:`parse_roots`."""
    roots = parse_roots(roots)
    refused = DataPathRefused(
        f"{field}: {path!r} is not under an allowed data root ({', '.join(roots) or 'none configured'}); "
        "use a path inside one of them (symlinks and '..' are resolved first), or ask the operator "
        "to add its prefix to RECTRAIN_DATA_ROOTS"
    )
    try:
        norm = _normalise(str(path))
    except (ValueError, OSError):
        raise refused from None
    if not norm or not any(_inside(norm, r) for r in roots):
        raise refused
    return norm


def check_data_paths(paths: Iterable[str], roots: Sequence[str], *, field: str = "data.path") -> None:
    """:func:`check_data_path` for each of ``paths`` (e.g. a ``{day}`` pattern per day)."""
    for p in paths:
        check_data_path(p, roots, field=field)
