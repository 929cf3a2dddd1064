"""Sparse and dense regularizers (see docs/regularizers.md).

The package itself imports no torch: its configuration (:mod:`.config`, the spec's
``regularizers`` section) is read by the API. What the train loop talks to,
:class:`~trainer.regularizers.regset.RegularizerSet`, is in :mod:`.regset`.
"""
