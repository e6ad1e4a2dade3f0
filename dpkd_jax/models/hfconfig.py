"""Helpers the family files share to read and write HF ``config.json`` fields:
refusing unsupported options by name, RoPE parameters, per-layer sliding windows."""

from __future__ import annotations

from .config import ROPE_TYPES, Rope
from ..errors import InputError


def refuse(hf: dict, family: str, allowed: dict):
    """Refuse any option whose value is not the one we implement: ``{key: (default, ok values...)}``."""
    for key, (default, *ok) in allowed.items():
        value = hf.get(key, default)
        if value is None:
            value = default
        if value not in ok:
            raise InputError(f"config.json: {family} option {key}={value!r} is not supported "
                             f"(supported: {', '.join(map(repr, ok))})")


def rope_from_hf(hf: dict, family: str, params: dict | None = None) -> Rope:
    """Our Rope from transformers 5's ``rope_parameters`` (or older ``rope_scaling`` + ``rope_theta``)."""
    p = dict(params if params is not None else (hf.get("rope_parameters") or hf.get("rope_scaling") or {}))
    theta = p.get("rope_theta", hf.get("rope_theta", 10000.0))
    kind = p.get("rope_type", p.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise InputError(f"config.json: {family} rope_type={kind!r} is not supported (supported: {ROPE_TYPES})")
    if p.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise InputError(f"config.json: {family} option partial_rotary_factor="
                         f"{p.get('partial_rotary_factor', hf.get('partial_rotary_factor'))} is not supported")
    kw = dict(theta=float(theta), type=kind)
    if kind in ("linear", "llama3"):
        kw["factor"] = float(p["factor"])
    if kind == "llama3":
        kw.update(low_freq_factor=float(p["low_freq_factor"]), high_freq_factor=float(p["high_freq_factor"]),
                  original_max_positions=int(p["original_max_position_embeddings"]))
    return Rope(**kw)


def rope_to_hf(r: Rope) -> dict:
    out = {"rope_type": r.type, "rope_theta": r.theta}
    if r.type in ("linear", "llama3"):
        out["factor"] = r.factor
    if r.type == "llama3":
        out.update(low_freq_factor=r.low_freq_factor, high_freq_factor=r.high_freq_factor,
                   original_max_position_embeddings=r.original_max_positions)
    return out


def layer_windows(hf: dict, n_layers: int, all_sliding: bool = False) -> tuple[int, ...]:
    """Per-layer sliding window (0 = full attention) from ``layer_types`` and ``sliding_window``;
    ``all_sliding``: every layer slides when ``sliding_window`` is set (Mistral)."""
    window = hf.get("sliding_window") or 0
    types = hf.get("layer_types")
    if types is not None:
        if len(types) != n_layers:
            raise InputError(f"config.json: layer_types has {len(types)} entries for {n_layers} layers")
        bad = sorted(set(types) - {"full_attention", "sliding_attention"})
        if bad:
            raise InputError(f"config.json: layer_types {bad} are not supported")
        if "sliding_attention" in types and not window:
            raise InputError("config.json: layer_types has sliding_attention layers but sliding_window is not set")
        out = tuple(window if t == "sliding_attention" else 0 for t in types)
    else:
        out = (window if all_sliding else 0,) * n_layers
    return out if any(out) else ()


def windows_to_hf(cfg) -> dict:
    w = cfg.attention.layer_windows
    if not w:
        return {"sliding_window": None, "layer_types": ["full_attention"] * cfg.n_layers}
    return {"sliding_window": max(w), "layer_types": ["sliding_attention" if x else "full_attention" for x in w]}


def rms_decoder_fields(cfg, architecture: str) -> dict:
    """The config.json fields every RMSNorm decoder family (Llama-shaped and Gemma) writes alike."""
    return {"model_type": cfg.model_type, "architectures": [architecture], "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff, "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_size,
            "max_position_embeddings": cfg.max_positions, "rms_norm_eps": cfg.norm.eps,
            "tie_word_embeddings": cfg.tied_head, **windows_to_hf(cfg)}
