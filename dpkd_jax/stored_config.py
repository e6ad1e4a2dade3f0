"""The resolved config a stage stored in its work dir (``run_config.json``), and what a resume changed.

A resumed run names every field whose value differs from the stored run's, in one line, before its first step:
a changed learning rate or loss weight then shows in the log of the run it changed. Fields that steer the command
rather than describe the run (resume, overwrite, mode, the compilation cache, the check's options) are left out.
"""

from __future__ import annotations

import json
import os

import jax

FILE = "run_config.json"
NOT_THE_RUN = ("resume", "overwrite", "mode", "compile_cache", "check.")


def flatten(tree, prefix: str = "") -> dict:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}``; lists stay values."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def changes(stored: dict, now: dict) -> list[str]:
    """``field old -> new`` for every field of the run that differs (absent on one side: ``(absent)``)."""
    out = []
    for k in sorted(set(stored) | set(now)):
        if k.startswith(NOT_THE_RUN) or stored.get(k, "(absent)") == now.get(k, "(absent)"):
            continue
        out.append(f"{k} {json.dumps(stored.get(k, '(absent)'))} -> {json.dumps(now.get(k, '(absent)'))}")
    return out


def check_and_store(cfg, desc: str, resumed: bool) -> list[str]:
    """Compare a resumed stage's config with the stored one (one printed line naming the changes), then store
    this one. Returns the changes."""
    path = os.path.join(cfg.workdir, FILE)
    now = flatten(cfg.to_dict())
    found = []
    if resumed and os.path.isfile(path):
        with open(path) as f:
            found = changes(flatten(json.load(f)), now)
        if found:
            print(f"{desc}: resumed with {len(found)} field(s) changed since the stored run ({path}): "
                  + "; ".join(found))
    if jax.process_index() == 0:
        os.makedirs(cfg.workdir, exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(now, f, indent=1, sort_keys=True)
        os.replace(path + ".tmp", path)
    return found
