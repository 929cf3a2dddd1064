"""Issue 27, point 5: every CLI command ends bad input with one line naming the file and
what is wrong, a non-zero exit and no traceback (``--debug`` shows it)."""

from __future__ import annotations

import pytest
import torch

from tests.trainer.specs import tiny_spec_dict


@pytest.fixture(scope="module")
def table_model(tmp_path_factory):
    """A real exported-model file (format of trainer/export.py) of a table-data DLRM, its
    weights as initialised: what predict reads, without a training run."""
    from trainer.export import FORMAT, feature_info, hashing_info
    from trainer.lifecycle import model_signature
    from trainer.model.dlrm import DLRM
    from trainer.spec import parse_spec

    d = tmp_path_factory.mktemp("model")
    cols = {"label": "click", "day": "day", "sparse": ["user", "item"], "dense": ["x"]}
    raw = tiny_spec_dict(
        model={"dense_arch": [8]},
        data={"source": "table", "path": str(d / "t.parquet"), "columns": cols, "synthetic": None},
    )
    raw["data"].pop("synthetic")
    spec = parse_spec(raw)
    cpu = torch.device("cpu")
    module = DLRM(spec, dense_device=cpu, ebc_device=cpu)
    artifact = {
        "format": FORMAT,
        "pass": 0,
        "spec": spec.model_dump(mode="json"),
        "model": model_signature(spec),
        "features": feature_info(spec),
        "hashing": hashing_info(spec),
        "state_dict": {k: v.detach().contiguous() for k, v in module.state_dict().items()},
    }
    torch.save(artifact, d / "model.pt")
    return d / "model.pt"


def _run(argv, capsys) -> tuple[int, str]:
    from cli.main import main

    capsys.readouterr()
    rc = main(argv)
    return rc, capsys.readouterr().err.strip()


def test_predict_on_truncated_and_garbage_parquet_says_one_line(table_model, tmp_path, capsys):
    import numpy as np
    import pandas as pd

    good = tmp_path / "good.parquet"
    pd.DataFrame(
        {"user": [1, 2], "item": [3, 4], "x": [0.1, 0.2], "click": [0, 1], "day": [0, 0]}
    ).to_parquet(good)
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    for bad in (truncated, garbage):
        rc, err = _run(
            ["predict", str(table_model), str(bad), "--out", str(tmp_path / "p.parquet"), "--no-progress"],
            capsys,
        )
        assert rc == 2, err
        assert err.count("\n") == 0 and "Traceback" not in err, err
        assert err.startswith(f"rectrain: data: {bad} cannot be read as a table: "), err
    # the same input with --debug: the traceback is shown (the error propagates)
    from cli.main import main
    from trainer.errors import DataError

    with pytest.raises(DataError):
        main(
            [
                "--debug",
                "predict",
                str(table_model),
                str(garbage),
                "--out",
                str(tmp_path / "p.parquet"),
                "--no-progress",
            ]
        )
    # the good file works
    rc, err = _run(
        ["predict", str(table_model), str(good), "--out", str(tmp_path / "p.parquet"), "--no-progress"],
        capsys,
    )
    assert rc == 0, err


def test_other_commands_end_bad_input_in_one_line(table_model, tmp_path, capsys):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model: [unclosed\n")
    garbage_model = tmp_path / "model.pt"
    garbage_model.write_bytes(b"not a model")
    cases = [
        (["run", str(tmp_path / "missing.yaml")], "missing.yaml"),
        (["run", str(bad_yaml)], "bad.yaml"),
        (["predict", str(garbage_model), "day:1"], "model.pt"),
        (
            ["predict", str(table_model), str(tmp_path / "nothing.parquet"), "--no-progress"],
            "nothing.parquet",
        ),
        (["export", str(tmp_path / "no-run"), "--out", str(tmp_path / "m.pt")], "no-run"),
        (["study", str(bad_yaml), "--local"], "bad.yaml"),
    ]
    for argv, name in cases:
        rc, err = _run(argv, capsys)
        assert rc != 0, (argv, err)
        assert err.count("\n") == 0 and "Traceback" not in err, (argv, err)
        assert name in err, (argv, err)


def test_output_piped_into_a_reader_that_stops_early_is_not_an_error():
    """``rectrain study ... --plan | head -1``: the reader closes the pipe after one line;
    rectrain exits 0 with nothing on stderr (it used to end with 'BrokenPipeError')."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    p = subprocess.Popen(
        [sys.executable, "-m", "cli", "study", "examples/study.yaml", "--plan"],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert p.stdout is not None and p.stderr is not None
    first = p.stdout.readline()
    p.stdout.close()  # what `head -1` does after its line
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 0, err
    assert first.startswith(b"study: 50 arms") and "BrokenPipe" not in err and err == "", err
