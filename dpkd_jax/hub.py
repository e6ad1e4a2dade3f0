"""Models named by their Hugging Face Hub id: ``org/name`` or ``org/name@revision``.

Resolved with ``huggingface_hub`` into its standard cache, honouring ``HF_HOME``,
``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and ``HF_TOKEN`` as read when the run starts (not when
the library was imported). Only what loading needs is downloaded: the config, safetensors
weights and their index, tokenizer files and the generation config. Every failure is one
``InputError`` naming the id: an unknown repository or revision, a gated one (set
``HF_TOKEN``), offline with no cached copy (the cache path and the command that fills it),
or a repository with only pickle weights (refused unless ``allow_pickle``).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re

from .errors import InputError

# What loading reads: config, weights (safetensors, or pickle when allowed), tokenizer, chat template, generation.
NEEDED = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
          "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json", "vocab.json",
          "merges.txt", "added_tokens.json", "chat_template.json", "chat_template.jinja"]
PICKLE = ["*.bin", "pytorch_model.bin.index.json"]
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9._/-]+)?$")


@dataclasses.dataclass(frozen=True)
class HubId:
    repo: str
    revision: str | None = None

    def __str__(self):
        return self.repo + (f"@{self.revision}" if self.revision else "")


def parse(path) -> HubId | None:
    """The hub id a model path names, or None for a local folder, a GGUF file or an asset."""
    if not isinstance(path, str) or path.startswith(("asset:", "/", ".", "~")) or path.endswith(".gguf"):
        return None
    if os.path.exists(path) or not _ID.match(path):
        return None
    repo, _, rev = path.partition("@")
    return HubId(repo, rev or None)


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def cache_dir() -> str:
    """``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.path.join(home, "hub")


def cached(hid: HubId) -> str | None:
    """The cached snapshot folder of ``hid`` (with a config.json), or None."""
    base = os.path.join(cache_dir(), "models--" + hid.repo.replace("/", "--"))
    rev = hid.revision or "main"
    ref = os.path.join(base, "refs", rev)
    commit = open(ref).read().strip() if os.path.isfile(ref) else rev
    snap = os.path.join(base, "snapshots", commit)
    return snap if os.path.isfile(os.path.join(snap, "config.json")) else None


def _fill_command(hid: HubId) -> str:
    return f"hf download {hid.repo}" + (f" --revision {hid.revision}" if hid.revision else "")


def _download(hid: HubId, patterns):
    import huggingface_hub as hub
    from huggingface_hub import errors
    try:
        return hub.snapshot_download(hid.repo, revision=hid.revision, cache_dir=cache_dir(), allow_patterns=patterns,
                                     local_files_only=offline(), token=os.environ.get("HF_TOKEN") or None)
    except errors.GatedRepoError:
        raise InputError(f"{hid}: the repository is gated or needs authorisation; accept its terms on the hub and "
                         f"set HF_TOKEN to a token with access") from None
    except errors.RepositoryNotFoundError:
        raise InputError(f"{hid}: no such repository on the hub (or it is private: set HF_TOKEN)") from None
    except errors.RevisionNotFoundError:
        raise InputError(f"{hid}: the repository has no revision {hid.revision!r}") from None
    except errors.LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if offline() else "the hub cannot be reached"
        raise InputError(f"{hid}: not in the hub cache {cache_dir()} and {why}; fill the cache on a machine with "
                         f"network with `{_fill_command(hid)}` (same HF_HUB_CACHE), or use a local folder") from None


def resolve(hid: HubId, *, allow_pickle=False) -> str:
    """The local snapshot folder of ``hid``, downloading what loading needs when online (with
    huggingface_hub's progress bars)."""
    snap = _download(hid, NEEDED + (PICKLE if allow_pickle else []))
    if not glob.glob(os.path.join(snap, "*.safetensors")):
        if allow_pickle and glob.glob(os.path.join(snap, "*.bin")):
            return snap
        raise InputError(f"{hid}: no safetensors weights in the repository; pickle (.bin) weights can run code and "
                         f"are refused unless model.allow_pickle=True")
    return snap


def describe(path) -> str | None:
    """For the preflight: where a hub id resolves and whether it is cached (None for other paths)."""
    hid = parse(path)
    if hid is None:
        return None
    snap = cached(hid)
    if snap:
        return f"{hid}: cached at {snap}"
    return (f"{hid}: not cached in {cache_dir()}; " + ("HF_HUB_OFFLINE is set, so the run will stop (fill it with "
            f"`{_fill_command(hid)}`)" if offline() else "the run downloads it"))
