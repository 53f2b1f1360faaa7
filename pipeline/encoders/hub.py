"""Hub models in the local HF cache: a pinned snapshot, its commit, and what to do without it.

The one-line error for a model that cannot be had names its pinned commit and the
``hf download`` command that fetches it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

#: What loading a hub model needs: configs, tokenizers and safetensors weights, not every
#: format a repository publishes (:func:`fetch_snapshot`).
HUB_FILES = ("*.json", "*.spm", "*.model", "*.txt", "*.safetensors")


def download_command(hub_id: str, revision: str | None = None) -> str:
    """The ``hf download`` command that puts a hub model, at ``revision``, in the HF cache."""
    return f"hf download {hub_id}" + (f" --revision {revision}" if revision else "")


def missing_hub_model(what: str, hub_id: str, reason: str,
                       revision: str | None = None) -> FileNotFoundError:
    """The one-line error for a hub model that can be neither downloaded nor found cached.

    A pinned model names its commit: ``hf download <id>`` alone would fetch ``main`` again.
    """
    pinned = f" at its pinned revision {revision}" if revision else ""
    return FileNotFoundError(
        f"{what}: cannot load '{hub_id}'{pinned} ({reason}); download it with "
        f"`{download_command(hub_id, revision)}` where the hub is reachable (it is then read "
        f"from the HF cache, also with HF_HUB_OFFLINE=1), or give a local model directory instead"
    )


def fetch_snapshot(hub_id: str, revision: str | None = None,
                   files: Sequence[str] | None = None) -> Path:
    """The HF-cache snapshot directory of a hub model, downloaded if the hub is reachable.

    With ``HF_HUB_OFFLINE=1`` only the HF cache is read. The directory is
    ``.../snapshots/<commit>``: :func:`snapshot_commit` names the commit it holds.

    Args:
        hub_id: ``org/name``.
        revision: Commit, branch or tag (``None``: ``main``).
        files: Glob patterns of the files to fetch (``None``: the whole repository), e.g.
            :data:`HUB_FILES`; a repository without safetensors weights then gets its
            ``pytorch_model.bin``.

    Raises:
        Exception: What ``huggingface_hub`` raises (offline and not cached, unknown id, ...).
    """
    from huggingface_hub import snapshot_download

    path = Path(snapshot_download(hub_id, revision=revision, allow_patterns=files))
    if files is not None and not any(path.glob("*.safetensors")):
        path = Path(snapshot_download(hub_id, revision=snapshot_commit(path) or revision,
                                      allow_patterns=["pytorch_model.bin"]))
    return path


def hub_snapshot(hub_id: str, revision: str | None = None, what: str | None = None,
                 files: Sequence[str] | None = None) -> Path:
    """:func:`fetch_snapshot`, with a hub model that cannot be had reported in one line.

    Raises:
        FileNotFoundError: Neither downloadable nor cached (one line: the model, its pinned
            revision and the command that fetches it).
    """
    try:
        return fetch_snapshot(hub_id, revision, files)
    except Exception as exc:  # offline, not cached, unknown id, gated: all mean the same here
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise missing_hub_model(what or f"model '{hub_id}'", hub_id, reason,
                                 revision) from None


def snapshot_commit(path: str | Path) -> str | None:
    """The commit of an HF-cache snapshot directory (``.../snapshots/<commit>``), else ``None``."""
    path = Path(path)
    if path.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", path.name):
        return path.name
    return None


def hub_commit(hub_id: str, revision: str | None = None) -> str | None:
    """The commit a hub id and revision resolve to in the local HF cache (``None``: absent).

    A look-up after the fact, for callers that let transformers load the model; whoever
    loads a snapshot directory itself records :func:`snapshot_commit` of it instead.
    """
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(hub_id, "config.json", revision=revision)
    return Path(found).parent.name if isinstance(found, str) else None
