"""Feature distillation: the distance between the student's and the teacher's hidden states
at chosen layer pairs (Tunix ``FeatureProjection``, MaxText's feature loss, FitNets).

The student's features pass through a learned linear map ``W [D_s, D_t]`` when the widths
differ (the projection trains with the student); the teacher's carry no gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .core import masked_mean

DISTANCES = ("mse", "cosine")


def feature_distance(student_feats, teacher_feats, mask, *, projection=None, distance="mse", eps=1e-8):
    """Token mean over ``mask`` of the per-position distance, averaged over the K layer pairs.

    * ``mse``: ``mean_d (s W − t)_d²``;
    * ``cosine``: ``1 − <s W, t> / max(|s W| |t|, eps)``.

    ``student_feats [K, B, T, D_s]``, ``teacher_feats [K, B, T, D_t]`` (no gradient),
    ``mask [B, T]``, ``projection [K, D_s, D_t]`` or None (``D_s = D_t``) -> ``[B]``.
    """
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    s = student_feats.astype(jnp.float32)
    t = jax.lax.stop_gradient(teacher_feats).astype(jnp.float32)
    if projection is not None:
        s = jnp.einsum("kbtd,kde->kbte", s, projection.astype(jnp.float32))
    if s.shape != t.shape:
        raise ValueError(f"student features {s.shape} (after the projection) and teacher features {t.shape} differ")
    if distance == "mse":
        per = jnp.mean(jnp.square(s - t), axis=-1)
    else:
        norm = jnp.linalg.norm(s, axis=-1) * jnp.linalg.norm(t, axis=-1)
        per = 1.0 - jnp.sum(s * t, axis=-1) / jnp.maximum(norm, eps)
    return masked_mean(per.mean(0), mask)
