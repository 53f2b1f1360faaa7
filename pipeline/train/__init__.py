"""Contrastive alignment of multilingual encoders on the sentence-transformers 6 trainer.

- :mod:`pipeline.train.data`: a ``build_corpus`` table → a ``datasets.Dataset`` whose columns
  are the languages in a fixed order (``multiway``/``human``: English then the pool; ``enx``:
  English and ``x``).
- :mod:`pipeline.train.trainer`: the trainer itself (arguments, precision, freezing,
  checkpoints and resume, the wall-time guard, loss curves).
- :mod:`pipeline.train.train_encoder`: the ``train_encoder@<encoder>-<regime>-<seed>`` stage.
"""
