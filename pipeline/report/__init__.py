"""The ``report`` stage: every stage's output gathered into one Markdown and one HTML report.

- :mod:`~pipeline.report.collect` reads the stage outputs into tidy tables (a missing one is
  ``None``, a malformed one a ``ValueError`` naming the file);
- :mod:`~pipeline.report.compare` turns evaluation scores into per-language comparisons,
  seen/unseen averages, relative changes and the sentences that state them;
- :mod:`~pipeline.report.projection` embeds a multi-way verse sample and projects it to 2-D;
- :mod:`~pipeline.report.figures` draws the PNG figures (matplotlib, no pyplot state);
- :mod:`~pipeline.report.render` renders one list of blocks as Markdown and as
  self-contained HTML;
- :mod:`~pipeline.report.build` assembles the sections (the stage's ``run``).
"""
