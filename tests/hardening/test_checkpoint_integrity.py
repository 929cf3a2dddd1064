"""Issue 27, point 2: no file a tenant can write runs code. A crafted pickle in each file
a checkpoint holds (DCP's .metadata, a .distcp file, rank_0.pt, dense_opt.pt) whose
payload would create a marker file: refused in one line by the integrity manifest
(default), and by the readers that run no code where foreign checkpoints are allowed —
through the warm-start/resume reader and the export reader. The marker never appears."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest

from tests.trainer.specs import tiny_spec_dict
from trainer.errors import RectrainError
from trainer.loop import LocalSession, Trainer
from trainer.spec import parse_spec

CRAFTED = [".metadata", "__0_0.distcp", "rank_0.pt", "dense_opt.pt"]


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """A real signed checkpoint (one Trainer, one save) and the Trainer to load into."""
    d = tmp_path_factory.mktemp("signed")
    t = Trainer(parse_spec(tiny_spec_dict()), LocalSession(d), d)
    t.checkpoint(0, 0, {})
    return d / "checkpoints" / "latest", t


def _crafted_copy(src: Path, dest: Path, name: str, marker: Path) -> Path:
    shutil.copytree(src, dest)
    assert (dest / name).exists(), sorted(p.name for p in dest.iterdir())
    (dest / name).write_bytes(pickle.dumps(_Payload(marker)))
    # the payload works: unpickled naively it creates the marker (then removed)
    pickle.loads((dest / name).read_bytes())
    assert marker.exists()
    marker.unlink()
    return dest


def _readers(t: Trainer):
    from trainer.checkpoint import load_checkpoint, read_model_state

    return {
        # the warm start/resume reader: .metadata, the .distcp files, dense_opt.pt, rank_<r>.pt
        "load": lambda d: load_checkpoint(d, rank=0, world_size=1, dmp=t.dmp, dense_opt=t.dense_opt),
        # rectrain export's reader
        "export": lambda d: read_model_state(d),
    }


def _one_line(e: RectrainError) -> str:
    msg = str(e)
    assert "\n" not in msg and "Traceback" not in msg and len(msg) < 600, msg
    return msg


def test_the_signed_checkpoint_loads(signed):
    from trainer.integrity import verify

    ckpt, t = signed
    verify(ckpt)
    for read in _readers(t).values():
        read(ckpt)


@pytest.mark.parametrize("name", CRAFTED)
def test_a_crafted_file_is_refused_and_runs_nothing(signed, tmp_path, monkeypatch, name):
    ckpt, t = signed
    marker = tmp_path / "PWNED"
    bad = _crafted_copy(ckpt, tmp_path / "ckpt", name, marker)
    # default: the manifest says the file changed
    monkeypatch.delenv("RECTRAIN_ALLOW_FOREIGN_CHECKPOINTS", raising=False)
    for how, read in _readers(t).items():
        with pytest.raises(RectrainError) as e:
            read(bad)
        msg = _one_line(e.value)
        assert f"{name} changed since rectrain wrote it" in msg, (how, msg)
        assert "RECTRAIN_ALLOW_FOREIGN_CHECKPOINTS" in msg
        assert not marker.exists(), how
    # foreign checkpoints allowed by the operator: read with the restricted readers
    monkeypatch.setenv("RECTRAIN_ALLOW_FOREIGN_CHECKPOINTS", "true")
    for how, read in _readers(t).items():
        if how == "export" and name in ("rank_0.pt", "dense_opt.pt"):
            read(bad)  # export reads the model's DCP files only: these are never opened
            assert not marker.exists()
            continue
        with pytest.raises(RectrainError) as e:
            read(bad)
        msg = _one_line(e.value)
        assert "checkpoint:" in msg and ("not" in msg or "cannot be read" in msg), (how, msg)
        assert not marker.exists(), how


def test_unsigned_or_resigned_checkpoints_are_foreign(signed, tmp_path, monkeypatch):
    from trainer.integrity import MANIFEST_PREFIX, _sign

    ckpt, t = signed
    monkeypatch.delenv("RECTRAIN_ALLOW_FOREIGN_CHECKPOINTS", raising=False)
    bare = tmp_path / "bare"
    shutil.copytree(ckpt, bare)
    for m in bare.glob(MANIFEST_PREFIX + "*"):
        m.unlink()
    with pytest.raises(RectrainError, match="has no integrity manifest"):
        _readers(t)["export"](bare)
    forged = tmp_path / "forged"
    shutil.copytree(ckpt, forged)
    mf = next(forged.glob(MANIFEST_PREFIX + "*"))
    doc = json.loads(mf.read_text())
    body = {k: doc[k] for k in ("format", "rank", "files")}
    mf.write_text(json.dumps({**body, "hmac": _sign(body, b"another key")}))
    with pytest.raises(RectrainError, match="is not signed by this service's key"):
        _readers(t)["load"](forged)
    # allowed: a foreign but honest checkpoint loads (restricted readers, same weights)
    monkeypatch.setenv("RECTRAIN_ALLOW_FOREIGN_CHECKPOINTS", "1")
    a, b = _readers(t)["export"](bare), _readers(t)["export"](ckpt)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
