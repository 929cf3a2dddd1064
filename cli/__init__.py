"""The ``rectrain`` console command: the top of the import graph.

:mod:`cli.main` composes the command groups of every layer with plain imports —
``trainer.cli`` (run, predict), ``services.cli`` (serve, worker, submit, jobs, ...,
study) and ``bench.cli`` (bench) — so no lower package needs to know about a higher
one (tests/test_layering.py).
"""
