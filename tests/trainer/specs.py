"""Small specs shared by the trainer tests."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def tiny_spec_dict(**overrides) -> dict:
    d = {
        "model": {"embedding_dim": 8, "hash_size": 2000, "dense_arch": [16, 8], "over_arch": [16]},
        "data": {
            "synthetic": {"examples_per_day": 4000, "num_users": 500, "num_ads": 200},
            "batch_size": 256,
        },
        "training": {"num_passes": 2},
        "scaling": {"num_workers": 1},
        "metrics": {"window_size": 1024, "report_every_steps": 5},
    }
    for k, v in overrides.items():
        d[k] = {**d.get(k, {}), **v} if isinstance(v, dict) else v
    return d
