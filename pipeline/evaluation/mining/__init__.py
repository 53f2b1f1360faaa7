"""Bitext mining with faiss k-NN and ratio-margin scoring (LASER / BUCC style).

mteb's bitext mining ranks by plain cosine over the full similarity matrix, fine for a test set
of a few thousand sentences. Mining two large monolingual collections needs k-NN search that
never materialises the ``n × m`` matrix, and the ratio margin of Artetxe & Schwenk (2019),
which discounts "hub" sentences that are close to everything::

    margin(x, y) = cos(x, y) / (mean_k cos(x, NN_k(x)) / 2 + mean_k cos(y, NN_k(y)) / 2)

- :mod:`~pipeline.evaluation.mining.shards` — embeddings as fp16/fp32 ``.npy`` shards on disk,
  read back memory-mapped a block at a time; unit-length rows of arrays or shards.
- :mod:`~pipeline.evaluation.mining.faiss_index` — the k-NN index: exact ``flat`` or the
  approximate ``ivf``, ``ivfpq`` (re-scored exactly) and ``hnsw`` built with
  ``index_factory``, searched in blocks (see ``docs/benchmarks.md``).
- :mod:`~pipeline.evaluation.mining.margin` — both k-NN directions, the margins, and the pairs
  of the ``forward``, ``backward`` or ``intersection`` mode.
- :mod:`~pipeline.evaluation.mining.sentences` — streamed one-sentence-a-line text files.
- :mod:`~pipeline.evaluation.mining.mine` — ``multiway mine``: two text files in, mined
  pairs out.
"""
