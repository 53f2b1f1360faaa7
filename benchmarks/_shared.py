"""What the benchmark scripts share: the repository on ``sys.path``, data paths, input text.

A script imports this module before anything of ``pipeline`` (``python benchmarks/<script>.py``
puts this folder on ``sys.path``). It imports nothing heavy: some scripts start their
memory-measuring children before they load torch.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: The Bible seed (``prepare_seed``); its ``eng_Latn`` column holds the English verses.
BIBLE = ROOT / "data/seed/bible_source.parquet"
#: The committed NMT model (CTranslate2).
NMT_MODEL = ROOT / "data/models/nmt/bible-marian"
#: Where the scripts write their results.
RESULTS_DIR = ROOT / "benchmarks/results"

_WORDS = ("the of and to in that he shall unto for his a they lord be is him not them it "
          "with all thou thy was which my me said but ye their have will are from as "
          "people land house day king son god").split()


def bible_or_generated(n: int, seed: int = 0) -> tuple[list[str], bool]:
    """``n`` English sentences and whether they are Bible verses.

    Verses of :data:`BIBLE` (shuffled, cycled if there are fewer) when it exists and pyarrow
    imports; else generated lines of 8-40 Bible-vocabulary words.
    """
    rng = random.Random(seed)
    if BIBLE.is_file():
        try:
            import pyarrow.parquet as pq

            verses = [v for v in pq.read_table(BIBLE, columns=["eng_Latn"])["eng_Latn"]
                      .to_pylist() if v]
            rng.shuffle(verses)
            return [verses[i % len(verses)] for i in range(n)], True
        except ImportError:
            pass
    return ([" ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 40))).capitalize() + "."
             for _ in range(n)], False)
