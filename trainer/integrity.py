"""Which checkpoints rectrain wrote: a signed manifest of content hashes, torch-free.

Every rank that writes part of a checkpoint (:func:`trainer.checkpoint.save_checkpoint`)
adds ``rectrain.manifest.<rank>.json``: the SHA-256 of each file it wrote, and an
HMAC-SHA256 of that list under the service's secret. A checkpoint is *ours* when every
manifest's HMAC checks, every file a manifest lists has that hash, and the files every
load reads (``.metadata``, ``rectrain.json``, ``dense_opt.pt``) are listed. Files no
manifest lists are never read by a load (DCP reads the ``.distcp`` files the signed
``.metadata`` names).

A checkpoint that is not ours (a *foreign* one: written elsewhere, by hand, by an older
rectrain, or altered since) is refused unless the operator sets
``RECTRAIN_ALLOW_FOREIGN_CHECKPOINTS=true``. Either way every checkpoint file is read
with readers that run no code (:mod:`trainer.checkpoint_readers`: weights-only
``torch.load``, a restricted unpickler for DCP's ``.metadata``); the manifest says who
wrote the weights.

The secret: ``RECTRAIN_CHECKPOINT_SECRET`` (the service sets it from its settings; on a
cluster every Ray node and the API need the same value, from one Kubernetes Secret).
Unset, a random key kept in ``$XDG_CACHE_HOME/rectrain/checkpoint.key`` (default
``~/.cache/rectrain/checkpoint.key``, mode 0600) is created once and used: enough when
every process that writes or reads checkpoints runs as one user on one machine
(``rectrain run``, ``rectrain serve`` with its own Ray head).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

from trainer import storage
from trainer.errors import RectrainError

ENV_SECRET = "RECTRAIN_CHECKPOINT_SECRET"
ENV_ALLOW_FOREIGN = "RECTRAIN_ALLOW_FOREIGN_CHECKPOINTS"
MANIFEST_FORMAT = "rectrain-manifest-1"
MANIFEST_PREFIX = "rectrain.manifest."
# what every load reads besides the .distcp files the signed .metadata names
REQUIRED = (".metadata", "rectrain.json", "dense_opt.pt")
_CHUNK = 1 << 20


class UntrustedCheckpoint(RectrainError):
    """A checkpoint rectrain did not write (or that changed since), foreign ones not allowed."""


def foreign_allowed() -> bool:
    return os.environ.get(ENV_ALLOW_FOREIGN, "").strip().lower() in ("1", "true", "yes", "on")


def _key_file() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "rectrain" / "checkpoint.key"


def secret() -> bytes:
    """The key checkpoints are signed with (see the module docstring)."""
    v = os.environ.get(ENV_SECRET, "").strip()
    if v:
        return v.encode()
    path = _key_file()
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(32).hex())
    try:
        os.link(tmp, path)  # first writer wins; concurrent ranks read the same key
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return bytes.fromhex(path.read_text().strip())


def _sign(body: dict[str, Any], key: bytes) -> str:
    msg = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def _sha256_local(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(directory: str | Path, rank: int) -> Path:
    """Sign every file this rank wrote into the local ``directory`` (call last)."""
    d = Path(directory)
    files = {
        p.relative_to(d).as_posix(): _sha256_local(p)
        for p in sorted(d.rglob("*"))
        if p.is_file() and not p.name.startswith(MANIFEST_PREFIX)
    }
    body = {"format": MANIFEST_FORMAT, "rank": int(rank), "files": files}
    out = d / f"{MANIFEST_PREFIX}{int(rank)}.json"
    out.write_text(json.dumps({**body, "hmac": _sign(body, secret())}, indent=1))
    return out


def _sha256_at(location: str) -> str:
    fs, path = storage.resolve(location)
    h = hashlib.sha256()
    with fs.open_input_stream(path) as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify(location: str | Path, key: bytes | None = None) -> None:
    """Raise :class:`UntrustedCheckpoint` (one line: what is wrong) unless the checkpoint
    at ``location`` (a path or URI) is one rectrain wrote and nothing listed changed."""
    import pyarrow.fs as pafs

    loc = str(location)
    fs, root = storage.resolve(loc)
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=False, allow_not_found=True))
    except OSError as e:
        raise UntrustedCheckpoint(f"cannot list {loc}: {e}") from None
    manifests = [i for i in infos if i.base_name.startswith(MANIFEST_PREFIX) and i.type == pafs.FileType.File]
    if not manifests:
        raise UntrustedCheckpoint(f"{loc} has no integrity manifest ({MANIFEST_PREFIX}<rank>.json)")
    key = key or secret()
    listed: dict[str, str] = {}
    for m in manifests:
        try:
            doc = json.loads(storage.read_text(storage.join(loc, m.base_name)))
            body = {"format": doc["format"], "rank": doc["rank"], "files": doc["files"]}
            ok = isinstance(doc["hmac"], str) and hmac.compare_digest(doc["hmac"], _sign(body, key))
        except (ValueError, KeyError, TypeError, storage.StorageError):
            raise UntrustedCheckpoint(f"{loc}: {m.base_name} is not a rectrain manifest") from None
        if not ok or body["format"] != MANIFEST_FORMAT or not isinstance(body["files"], dict):
            raise UntrustedCheckpoint(f"{loc}: {m.base_name} is not signed by this service's key")
        listed.update(body["files"])
    missing = [f for f in REQUIRED if f not in listed]
    if missing:
        raise UntrustedCheckpoint(f"{loc}: {', '.join(missing)} not in its manifest")
    for name, digest in sorted(listed.items()):
        if name.startswith("/") or ".." in name.split("/"):
            raise UntrustedCheckpoint(f"{loc}: its manifest names {name!r}")
        try:
            got = _sha256_at(storage.join(loc, name))
        except (OSError, storage.StorageError):
            raise UntrustedCheckpoint(f"{loc}: {name} is listed in its manifest but missing") from None
        if not hmac.compare_digest(got, str(digest)):
            raise UntrustedCheckpoint(f"{loc}: {name} changed since rectrain wrote it (hash mismatch)")


def check_trusted(
    location: str | Path,
    field: str = "checkpoint",
    *,
    key: bytes | None = None,
    allow_foreign: bool | None = None,
) -> bool:
    """True for a checkpoint rectrain wrote; False for a foreign one where the operator
    allows them (read with the restricted readers all the same); else raise
    :class:`UntrustedCheckpoint` naming ``field``, the location and what to do."""
    try:
        verify(location, key)
        return True
    except UntrustedCheckpoint as e:
        if foreign_allowed() if allow_foreign is None else allow_foreign:
            return False
        raise UntrustedCheckpoint(
            f"{field}: not a checkpoint this service wrote ({e.message}); only signed checkpoints are "
            f"loaded unless the operator sets {ENV_ALLOW_FOREIGN}=true"
        ) from None
