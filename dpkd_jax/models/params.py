"""How one HF tensor becomes (part of) one of our stacked parameters, and back.

A model's weight table is a list of :class:`Row`. ``{i}`` in an HF name is the
layer index; such rows fill slice ``i`` of our ``[layers, ...]`` array. ``sub``
indexes further into that slice (OPT's separate q/k/v fill thirds of ``qkv``).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Row:
    hf: str                 # HF tensor name; "{i}" = layer index
    ours: str               # our parameter name (see transformer.param_shapes)
    transpose: bool = False  # torch nn.Linear stores [out, in]; we store [in, out]
    sub: tuple = ()         # index into our (per-layer) array after the layer index
    in_axes: int = 1        # how many leading axes of ours make the HF "in" side ([H, K, D]: 2)

    @property
    def per_layer(self):
        return "{i}" in self.hf

    @property
    def is_vector(self):
        # our naming convention (transformer.param_shapes): biases and LayerNorm params
        return self.ours.endswith(("_b", "_bias", "_scale", "/scale", "/bias"))

    def to_ours(self, hf_array: np.ndarray, target_shape) -> np.ndarray:
        a = hf_array.T if self.transpose else hf_array
        return a.reshape(target_shape)

    def to_hf(self, ours: np.ndarray) -> np.ndarray:
        """Ours back to HF's 1-D (vectors) or 2-D ``[in, out]`` / ``[out, in]`` layout."""
        if self.is_vector:
            return np.ascontiguousarray(ours.reshape(-1))
        a = ours.reshape(int(np.prod(ours.shape[:self.in_axes])), -1)
        return np.ascontiguousarray(a.T if self.transpose else a)


def hf_names(rows, n_layers):
    """Every HF tensor name the table expects."""
    return [r.hf.format(i=i) for r in rows for i in (range(n_layers) if r.per_layer else [None])]
