"""Zero-shot cross-lingual transfer on top of the (aligned) encoders: DR-MIM, EPAR, baseline.

Train a task head on English labels only, test it in every other language.

- :mod:`pipeline.downstream.config` — :class:`DownstreamConfig` (and the DR-MIM/EPAR knobs).
- :mod:`pipeline.downstream.data` — tasks (Bible genre and paraphrase offline; PAWS-X, XNLI,
  TyDiQA-GoldP from the hub), the multi-way corpus, tokenisation.
- :mod:`pipeline.downstream.encoder` — frozen bottom (features computed once) and trainable
  top block of the encoder.
- :mod:`pipeline.downstream.losses` — the loss terms (gradient reversal, decorrelation, MI
  bounds, parallel tie, attention pull, robust targets, embedding push).
- :mod:`pipeline.downstream.methods` — ``finetune``, ``drmim``, ``epar`` and their switchable
  parts.
- :mod:`pipeline.downstream.train` — the training loop, prediction, accuracy and QA F1/EM.
- :mod:`pipeline.downstream.run` — :func:`run_downstream`: all variants × seeds on one encoder.

The design of the methods is in ``docs/downstream.md``. Nothing heavy is imported here.
"""

from pipeline.downstream.config import DownstreamConfig, DrmimConfig, EparConfig

__all__ = ["DownstreamConfig", "DrmimConfig", "EparConfig", "run_downstream"]


def __getattr__(name: str):
    # run_downstream pulls in torch and transformers: import it on first use only.
    if name == "run_downstream":
        from pipeline.downstream.run import run_downstream

        return run_downstream
    raise AttributeError(name)
