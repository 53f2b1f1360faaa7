"""The ``report`` stage: every stage's output gathered into one Markdown and one HTML report.

- :mod:`~pipeline.report.report`: the stage's ``run``, config check, document assembly;
- one module per group of sections, in the report's order:
  :mod:`~pipeline.report.headline` (regime differences with paired intervals),
  :mod:`~pipeline.report.corpus` (source, filters, MT quality),
  :mod:`~pipeline.report.training` (NMT and alignment runs),
  :mod:`~pipeline.report.results` (evaluation tables, encoders side by side),
  :mod:`~pipeline.report.projection` (embedding projection),
  :mod:`~pipeline.report.downstream` (zero-shot transfer);
- :mod:`~pipeline.report.common`: what the sections share (labels, task order, formats);
- :mod:`~pipeline.report.collect` reads the stage outputs (a missing one is ``None``, a
  malformed one a ``ValueError`` naming the file);
- :mod:`~pipeline.report.compare`: per-language comparisons, group means, relative changes;
- :mod:`~pipeline.report.figures` draws the PNG figures (matplotlib, no pyplot state);
- :mod:`~pipeline.report.render` renders the blocks as Markdown and self-contained HTML.
"""
