"""``python -m services.study_stats STUDY.json [--html OUT.html]`` (see :func:`services.study_stats.main`)."""

from services.study_stats import main

if __name__ == "__main__":
    raise SystemExit(main())
