"""Evaluation: mteb task suites, the project's own tasks, result flattening, margin mining.

- :mod:`pipeline.evaluation.tasks` — mteb tasks over local human-made data (one class per
  module): Bible and gettext bitext mining, cross-lingual genre classification, paraphrase
  pair classification.
- :mod:`pipeline.evaluation.suites` — the suite catalogue ``configs/mteb.yaml``.
- :mod:`pipeline.evaluation.evaluate` — evaluate one encoder on a suite with ``mteb.evaluate``
  and flatten the results into per-language and seen/unseen metrics.
- :mod:`pipeline.evaluation.verse_mining` — test verses mined between every pair of
  evaluated languages, one outcome per verse; :mod:`pipeline.evaluation.items` — the mteb
  tasks' per-item outcomes.
- :mod:`pipeline.evaluation.mining` — faiss k-NN ratio-margin mining (LASER/BUCC style) and
  ``multiway mine``.

Nothing heavy is imported here: ``mining`` must not pay for ``mteb``'s import.
"""
