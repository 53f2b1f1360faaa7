"""Machine translation with CTranslate2.

- :mod:`~pipeline.translate.families` — ``multiway_nmt.json`` metadata and per-family
  tokenisation (Marian, M2M100, NLLB).
- :mod:`~pipeline.translate.engine` — the :class:`~pipeline.translate.engine.Translator`
  protocol and the CTranslate2 engine (``load_translator``).
- :mod:`~pipeline.translate.convert_nmt` — Hugging Face → CTranslate2 conversion (stage
  ``convert_nmt``, also used by ``train_nmt``).
- :mod:`~pipeline.translate.shards` — sharded, resumable Parquet output.
- :mod:`~pipeline.translate.translate` — stage ``translate@<lang>``.
- :mod:`~pipeline.translate.ray_backend` — its ``ray`` backend (CTranslate2 actors on
  a Ray cluster; needs the ``scale`` extra).
- :mod:`~pipeline.translate.train_nmt` — stage ``train_nmt`` (the project's own model).

Nothing is imported here, so importing one submodule does not load the others' libraries.
"""
