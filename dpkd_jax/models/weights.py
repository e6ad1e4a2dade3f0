"""How HF tensors become our stacked parameters and back: the :class:`Row` a
family's weight table is made of, and the one loader/saver every family shares.

``{i}`` in an HF name is the layer index; such rows fill slice ``i`` of our
``[layers, ...]`` array. ``part=(j, n)`` takes part ``j`` of ``n`` equal slices
of the HF tensor's output axis (GPT-2's fused ``c_attn`` holds q, k and v).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import numpy as np


@dataclasses.dataclass(frozen=True)
class Row:
    hf: str                  # HF tensor name; "{i}" = layer index
    ours: str                # our parameter name: the NNX state path (see split.param_info)
    transpose: bool = False  # torch nn.Linear stores [out, in]; we store [in, out]
    in_axes: int = 1         # leading axes of ours that make HF's "in" side ([H, K, D]: 2)
    part: tuple = ()         # (j, n): part j of n of HF's output axis

    @property
    def per_layer(self):
        return "{i}" in self.hf

    def names(self, n_layers):
        return [self.hf.format(i=i) for i in (range(n_layers) if self.per_layer else [None])]

    def to_ours(self, hf_array: np.ndarray, target_shape) -> np.ndarray:
        a = hf_array.T if self.transpose else hf_array
        if self.part:
            j, n = self.part
            w = a.shape[-1] // n
            a = a[..., j * w:(j + 1) * w]
        return a.reshape(target_shape)

    def to_hf_layout(self, ours: np.ndarray, vector: bool) -> np.ndarray:
        """Ours as HF's 1-D vector (biases, norm scales: ``vector``) or 2-D ``[in, out]``
        (before any transpose)."""
        if vector:
            return ours.reshape(-1)
        return ours.reshape(int(np.prod(ours.shape[:self.in_axes])), -1)


def proj(name: str, leaf: str) -> str:
    """Our state path of a projection's weight (``w``) or bias (``b``): q/k/v/o sit in the
    block's attention, gate/up/down in its MLP."""
    return f"blocks/{'attn' if name in ('q', 'k', 'v', 'o') else 'mlp'}/{name}/{leaf}"


def hf_names(rows, n_layers):
    """Every HF tensor name the table expects."""
    return sorted({name for r in rows for name in r.names(n_layers)})


def assemble(table: dict, rows: list[Row], get: Callable[[str], np.ndarray], n_layers: int, np_dtype,
             where: str = "") -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(our name, host array)`` one parameter at a time (so a big checkpoint never
    needs twice its size in host memory). ``get(hf_name)`` reads one HF tensor."""
    for ours, (shape, _) in table.items():
        buf = np.empty(shape, np_dtype)
        for row in (r for r in rows if r.ours == ours):
            for i in (range(n_layers) if row.per_layer else [None]):
                name = row.hf.format(i=i)
                dst = buf if i is None else buf[i]
                src = get(name)
                try:
                    dst[...] = row.to_ours(src, dst.shape)
                except ValueError:
                    raise ValueError(f"{where}: weight {name} has shape {tuple(src.shape)}, which does not fit "
                                     f"our {ours}{list(shape)} (expected {int(np.prod(dst.shape))} elements as "
                                     f"{dst.shape}{' after a transpose' if row.transpose else ''})") from None
        yield ours, buf


def disassemble(table: dict, rows: list[Row], params: dict, n_layers: int, out_dtype,
                vectors: frozenset = frozenset()) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(HF name, array)`` for every HF tensor, joining ``part`` rows back together;
    ``vectors``: our names stored by HF as 1-D tensors (biases and norm scales, by kind)."""
    groups: dict[str, list[Row]] = {}
    for r in rows:
        if r.ours in table:
            groups.setdefault(r.hf, []).append(r)
    for hf, group in groups.items():
        group = sorted(group, key=lambda r: r.part[0] if r.part else 0)
        fulls = [np.asarray(params[r.ours]).astype(out_dtype) for r in group]
        for i in (range(n_layers) if group[0].per_layer else [None]):
            pieces = [g.to_hf_layout(f if i is None else f[i], g.ours in vectors) for g, f in zip(group, fulls)]
            a = np.concatenate(pieces, axis=-1) if len(pieces) > 1 else pieces[0]
            yield hf.format(i=i), np.ascontiguousarray(a.T if group[0].transpose else a)
