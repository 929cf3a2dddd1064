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

from collections.abc import Iterable, Sequence

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


def _normalise(path: str, *, root: bool = False) -> str:
    """A canonical form (:func:`trainer.storage.canonical`, the one normalisation every
    location check uses), without a URI's query; "" for a relative path (never under a
    root: it depends on the cwd)."""
    from trainer.storage import StorageError, canonical

    try:
        norm = canonical(path, relative_ok=False)
    except StorageError as e:
        if root:
            raise ValueError(f"data root {path!r}: {e}") from None
        if "relative path" in str(e):
            return ""
        raise ValueError(str(e)) from None
    return norm.partition("?")[0] if "://" in norm else norm


def _inside(path: str, root: str) -> bool:
    from trainer.storage import within

    return within(path, root)


def check_data_path(
    path: str, roots: Sequence[str], *, field: str = "data.path", forbidden: Sequence[str] = ()
) -> str:
    """Return ``path`` normalised if it is under one of ``roots``; else raise
    :class:`DataPathRefused` naming ``field`` and the roots (same text whether or not
    the file exists). ``roots`` as given by :func:`parse_roots`."""
    roots = parse_roots(roots)
    refused = DataPathRefused.at(
        field,
        f"{path!r} is not under an allowed data root ({', '.join(roots) or 'none configured'}); "
        "use a path inside one of them (symlinks and '..' are resolved first), or ask the operator "
        "to add its prefix to RECTRAIN_DATA_ROOTS",
    )
    try:
        norm = _normalise(str(path))
    except (ValueError, OSError):
        raise refused from None
    if not norm or not any(_inside(norm, r) for r in roots):
        raise refused
    # inside a root but in a place no tenant reads by path (every job's storage): the
    # same refusal, so the answer says nothing of what is there
    if any(_inside(norm, f) or _inside(f, norm) for f in forbidden):
        raise refused
    return norm


def check_data_paths(
    paths: Iterable[str], roots: Sequence[str], *, field: str = "data.path", forbidden: Sequence[str] = ()
) -> None:
    """:func:`check_data_path` for each of ``paths`` (e.g. a ``{day}`` pattern per day)."""
    for p in paths:
        check_data_path(p, roots, field=field, forbidden=forbidden)
