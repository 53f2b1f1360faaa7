"""Zero-shot cross-lingual transfer on top of the (aligned) encoders: DR-MIM, EPAR, baseline.

Train a task head on English labels only, test it in every other language. Each stage
module holds its config (:class:`~pipeline.downstream.train_drmim.TrainDrmimConfig`,
:class:`~pipeline.downstream.evaluate_downstream.EvaluateDownstreamConfig`) and ``run``;
the other modules never import a stage module: they take the config values they use as
parameters named after the fields.

- :mod:`pipeline.downstream.knobs` — the DR-MIM and EPAR knobs (the ``drmim`` and ``epar``
  sections nested in ``train_drmim``'s config; torch-free).
- :mod:`pipeline.downstream.data` — tasks (Bible genre and paraphrase offline; PAWS-X, XNLI,
  TyDiQA-GoldP from the hub).
- :mod:`pipeline.downstream.tokens` — the multi-way corpus rows, tokenisation.
- :mod:`pipeline.downstream.encoder` — frozen bottom (features computed once) and trainable
  top block of the encoder.
- :mod:`pipeline.downstream.losses` — the loss terms (gradient reversal, decorrelation, MI
  bounds, parallel tie, attention pull, robust targets, embedding push).
- :mod:`pipeline.downstream.methods` — ``finetune``, ``drmim``, ``epar`` and their switchable
  parts.
- :mod:`pipeline.downstream.train` — the training loop and prediction.
- :mod:`pipeline.downstream.train_drmim` — stage ``train_drmim``: all variants × seeds on one
  encoder and task, predictions in every language.
- :mod:`pipeline.downstream.evaluate_downstream` — stage ``evaluate_downstream``: accuracy or QA
  F1/EM per language, means and spreads over seeds, the feature figure.

The design of the methods is in ``docs/downstream.md``.
"""
