"""multiway-align: multi-way corpora, encoder alignment, mteb evaluation, zero-shot transfer."""
