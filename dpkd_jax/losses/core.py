"""The sequence-level preference losses (DPKD and its forms, PLaD, daDPO), cross-entropy,
and the dense token-level divergences. See the package docstring for the contract."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import tokenwise as tw

__all__ = [
    "token_logprobs", "sequence_logprobs", "cross_entropy", "masked_mean",
    "dpkd_loss", "dpkd_token_loss", "DPKD_FORMS",
    "forward_kl", "reverse_kl", "generalized_jsd", "skew_kl", "skew_reverse_kl",
    "adaptive_kl", "plad_loss", "dadpo_loss",
    "implicit_reward", "reward_margin", "preference_accuracy",
]

DPKD_FORMS = ("sigmoid", "ipo", "cpo", "simpo", "dpop")


# ---------------------------------------------------------------- checks ---

def _same_shape(**arrays):
    """Raise ValueError naming the first argument whose shape differs."""
    items = [(k, v) for k, v in arrays.items() if v is not None]
    name0, ref = items[0]
    for name, arr in items[1:]:
        if jnp.shape(arr) != jnp.shape(ref):
            raise ValueError(
                f"{name} has shape {jnp.shape(arr)} but {name0} has shape {jnp.shape(ref)}")


def _check_logits(student_logits, teacher_logits, mask):
    if jnp.ndim(student_logits) != 3:
        raise ValueError(f"student_logits must be [B, T, V], got shape {jnp.shape(student_logits)}")
    _same_shape(student_logits=student_logits, teacher_logits=teacher_logits)
    if jnp.shape(mask) != jnp.shape(student_logits)[:2]:
        raise ValueError(f"mask has shape {jnp.shape(mask)}, expected {jnp.shape(student_logits)[:2]} "
                         "(the [B, T] of the logits)")


def _lengths(lengths):
    """Token counts as float32, clamped at 1 so empty rows stay finite."""
    return jnp.maximum(jnp.asarray(lengths, jnp.float32), 1.0)


def masked_mean(values, mask):
    """``Σ_i m_i v_i / max(Σ_i m_i, 1)`` over the last axis: ``[B, T] -> [B]``."""
    mask = jnp.asarray(mask, jnp.float32)
    return jnp.sum(values * mask, axis=-1) / _lengths(jnp.sum(mask, axis=-1))


# ------------------------------------------------------------ log-probs ---

def token_logprobs(logits, labels):
    """``log softmax(logits)[b, i, labels[b, i]]`` in float32.

    Shapes: logits ``[B, T, V]``, labels ``[B, T]`` (int) -> ``[B, T]``.
    Computed as ``logits[label] - logsumexp(logits)`` so the only ``[B, T, V]``
    work is the fused float32 reduction; no full log-softmax is stored.
    """
    if jnp.shape(labels) != jnp.shape(logits)[:-1]:
        raise ValueError(f"labels has shape {jnp.shape(labels)}, expected {jnp.shape(logits)[:-1]}")
    return tw.logprob(logits, labels)


def sequence_logprobs(logits, labels, mask):
    """Summed masked token log-probs and token counts.

    ``logps[b] = Σ_i m[b,i] · log q(labels[b,i])``, ``lengths[b] = Σ_i m[b,i]``.
    Shapes: logits ``[B, T, V]``, labels/mask ``[B, T]`` -> (``[B]``, ``[B]``).
    The lengths are the raw counts (0 for an empty row); the losses clamp them.
    """
    _same_shape(labels=labels, mask=mask)
    mask = jnp.asarray(mask, jnp.float32)
    return jnp.sum(token_logprobs(logits, labels) * mask, axis=-1), jnp.sum(mask, axis=-1)


def cross_entropy(logits, labels, mask):
    """Token-mean cross-entropy per example.

    ``CE[b] = −Σ_i m[b,i] log q(labels[b,i]) / max(Σ_i m[b,i], 1)``.
    Shapes: logits ``[B, T, V]``, labels/mask ``[B, T]`` -> ``[B]``.
    """
    _same_shape(labels=labels, mask=mask)
    return -masked_mean(token_logprobs(logits, labels), mask)


# ------------------------------------------------- sequence-level DPKD ---

def dpkd_loss(student_chosen_logps, student_rejected_logps,
              teacher_chosen_logps, teacher_rejected_logps,
              chosen_lengths, rejected_lengths, *,
              beta=0.1, form="sigmoid", length_normalize=True, label_smoothing=0.0,
              reference_free=False, simpo_gamma=0.5, dpop_lambda=50.0, cpo_alpha=1.0,
              teacher_chosen_lengths=None, teacher_rejected_lengths=None):
    """Sequence-level DPKD loss and its preference forms (method.md, Eq. 8–9, Table 2).

    "chosen" is the teacher's response ``y_t``, "rejected" the student's ``y_s``;
    all inputs are ``[B]``: summed response log-probs under the student ``q`` and
    the teacher ``p``, and response lengths ``|y|`` (clamped at 1). With
    ``Δ_t = log q(y_t) − log p(y_t)``, ``Δ_s`` likewise, each divided by its
    length when ``length_normalize`` (Eq. 9, default) and ``u = Δ_t − Δ_s``:

    * ``sigmoid``: ``−(1−ε) log σ(βu) − ε log σ(−βu)``; ``ε = label_smoothing``
      (ε = 0 is DPKD itself).
    * ``ipo``: ``(u − 1/(2β))²``.
    * ``cpo``: ``−log σ(β(log q(y_t) − log q(y_s))) + α_cpo · CE(y_t)`` with
      summed log-probs (by definition) and ``CE(y_t) = −log q(y_t)/|y_t|``; no teacher.
    * ``simpo``: ``−log σ((β/|y_t|) log q(y_t) − (β/|y_s|) log q(y_s) − γ)``; no
      teacher. This is SimPO's paper form; the reference code's variant (pseudo
      length, no margin) is deliberately not followed.
    * ``dpop``: ``−log σ(β(u − λ · max(0, log p(y_t) − log q(y_t))))`` with the
      penalty normalised like ``u``; the penalty sits inside the sigmoid as in
      the DPOP paper (the reference code puts it outside).

    ``reference_free`` drops the teacher terms from ``Δ`` (sigmoid, ipo).

    Across tokenizers a text has a different token count under each model: pass the
    teacher's counts as ``teacher_chosen_lengths``/``teacher_rejected_lengths`` (default: the
    same as the student's). With ``length_normalize`` each log-prob is then divided by its own
    model's count, ``Δ_t = log q(y_t)/|y_t|_q − log p(y_t)/|y_t|_p``: each side is that model's
    mean surprise per token of its own factorisation. Dividing both by one side's count would
    tilt Δ by the ratio of the two tokenizers' granularity (a finer tokenizer makes more,
    cheaper tokens), an offset unrelated to how well the student matches the teacher.
    Returns the per-example loss ``[B]`` in float32.
    """
    _check_dpkd_options(form, beta, label_smoothing, reference_free)
    _same_shape(student_chosen_logps=student_chosen_logps, student_rejected_logps=student_rejected_logps,
                teacher_chosen_logps=teacher_chosen_logps, teacher_rejected_logps=teacher_rejected_logps,
                chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    sc, sr, tc, tr = map(f32, (student_chosen_logps, student_rejected_logps,
                               teacher_chosen_logps, teacher_rejected_logps))
    n_c, n_r, tn_c, tn_r = _dpkd_lengths(chosen_lengths, rejected_lengths, teacher_chosen_lengths,
                                         teacher_rejected_lengths)
    if form == "cpo":
        return -jax.nn.log_sigmoid(beta * (sc - sr)) + cpo_alpha * (-sc / n_c)
    if form == "simpo":
        return -jax.nn.log_sigmoid(beta * sc / n_c - beta * sr / n_r - simpo_gamma)
    if reference_free:
        tc, tr = jnp.zeros_like(tc), jnp.zeros_like(tr)
    norms = (n_c, n_r, tn_c, tn_r) if length_normalize else (1.0,) * 4
    u = _dpkd_margin((sc, sr, tc, tr), norms)
    if form == "ipo":
        return (u - 1.0 / (2.0 * beta)) ** 2
    if form == "dpop":
        u = u - dpop_lambda * jnp.maximum(0.0, tc / norms[2] - sc / norms[0])
    logits = beta * u
    return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(logits) - label_smoothing * jax.nn.log_sigmoid(-logits)


def _check_dpkd_options(form, beta, label_smoothing, reference_free):
    """:func:`dpkd_loss`'s options, one ``ValueError`` naming the bad one."""
    if form not in DPKD_FORMS:
        raise ValueError(f"form must be one of {DPKD_FORMS}, got {form!r}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if label_smoothing and form != "sigmoid":
        raise ValueError(f"label_smoothing={label_smoothing} applies to form='sigmoid' only, got form={form!r}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if reference_free and form == "dpop":
        raise ValueError("reference_free=True is undefined for form='dpop': its penalty needs the teacher")


def _dpkd_lengths(chosen, rejected, teacher_chosen, teacher_rejected):
    """The student's response lengths (clamped at 1) and the teacher's (default: the student's)."""
    n_c, n_r = _lengths(chosen), _lengths(rejected)
    return (n_c, n_r, n_c if teacher_chosen is None else _lengths(teacher_chosen),
            n_r if teacher_rejected is None else _lengths(teacher_rejected))


def _dpkd_margin(logps, norms):
    """``u = Δ_t − Δ_s`` with ``Δ = log q / n_q − log p / n_p``: ``logps`` (student chosen, student rejected,
    teacher chosen, teacher rejected) ``[B]``, ``norms`` their divisors in the order (student chosen, student
    rejected, teacher chosen, teacher rejected)."""
    sc, sr, tc, tr = logps
    n_c, n_r, tn_c, tn_r = norms
    return (sc / n_c - tc / tn_c) - (sr / n_r - tr / tn_r)


def dpkd_token_loss(student_logits, teacher_logits, mask, *, beta=0.1, label_smoothing=0.0,
                    reference_free=False):
    """The reference code's token-level DPKD (its ``--seqKD-DPO``), token mean per example.

    Both models are teacher-forced on the same (gold) response. At each position
    ``i`` the chosen token is ``c = argmax p(·|i)`` (teacher) and the rejected one
    ``r = argmax q(·|i)`` (student);
    ``h_i = β[(log q(c) − log p(c)) − (log q(r) − log p(r))]`` (teacher terms
    dropped when ``reference_free``), ``ℓ_i = −(1−ε) log σ(h_i) − ε log σ(−h_i)``,
    and the loss is ``Σ_i m_i ℓ_i / max(Σ_i m_i, 1)``.

    Shapes: logits ``[B, T, V]``, mask ``[B, T]`` -> ``[B]``. Memory: two fused
    float32 logsumexp reductions over ``V``; no ``[B, T, V]`` float32 copy is kept.
    """
    _check_logits(student_logits, teacher_logits, mask)
    return masked_mean(tw.dpkd_token(student_logits, teacher_logits, beta=beta, label_smoothing=label_smoothing,
                                     reference_free=reference_free), mask)


# ------------------------------------------------ token-level divergences ---

def _token_mean(per_token, student_logits, teacher_logits, mask, **kw):
    _check_logits(student_logits, teacher_logits, mask)
    return masked_mean(per_token(student_logits, teacher_logits, **kw), mask)


def forward_kl(student_logits, teacher_logits, mask, *, temperature=1.0):
    """Token-mean forward KL ``KL(p‖q) = Σ_v p log(p/q)``.

    ``p = softmax(teacher/τ)``, ``q = softmax(student/τ)``; logits ``[B, T, V]``,
    mask ``[B, T]`` -> ``[B]``. """
    return _token_mean(tw.forward_kl, student_logits, teacher_logits, mask, temperature=temperature)


def reverse_kl(student_logits, teacher_logits, mask, *, temperature=1.0):
    """Token-mean reverse KL ``KL(q‖p) = Σ_v q log(q/p)``; shapes as :func:`forward_kl`."""
    return _token_mean(tw.reverse_kl, student_logits, teacher_logits, mask, temperature=temperature)


def generalized_jsd(student_logits, teacher_logits, mask, *, temperature=1.0, beta=0.5):
    """Token-mean generalised JSD (GKD): ``β KL(p‖M) + (1−β) KL(q‖M)``, ``M = βp + (1−β)q``.

    ``beta`` must be a Python float in [0, 1]. The endpoints are computed
    exactly as the divergences method.md names, not through the mixture:
    ``β = 0`` is forward KL ``KL(p‖q)``, ``β = 1`` reverse KL ``KL(q‖p)``.
    Shapes as :func:`forward_kl`. """
    return _token_mean(tw.generalized_jsd, student_logits, teacher_logits, mask, temperature=temperature, beta=beta)


def skew_kl(student_logits, teacher_logits, mask, *, temperature=1.0, alpha=0.1):
    """Token-mean skew KL (DistiLLM): ``KL(p ‖ αp + (1−α)q)``; shapes as :func:`forward_kl`."""
    return _token_mean(tw.skew_kl, student_logits, teacher_logits, mask, temperature=temperature, alpha=alpha)


def skew_reverse_kl(student_logits, teacher_logits, mask, *, temperature=1.0, alpha=0.1):
    """Token-mean skew reverse KL: ``KL(q ‖ (1−α)p + αq)``; shapes as :func:`forward_kl`."""
    return _token_mean(tw.skew_reverse_kl, student_logits, teacher_logits, mask, temperature=temperature, alpha=alpha)


def adaptive_kl(student_logits, teacher_logits, mask, *, temperature=1.0, mu=0.5):
    """Token-mean adaptive KL (AKL).

    Per position: sort ``p`` descending; the head is the tokens whose cumulative
    probability is ``≤ μ`` (the top-1 token always); ``e = |p − q|`` with ``q``
    detached; ``g_h = Σ_head e``, ``g_t = Σ_tail e``;
    ``AKL = g_h/(g_h+g_t) · KL(p‖q) + g_t/(g_h+g_t) · KL(q‖p)`` (equal weights
    when ``p = q`` exactly). Shapes as :func:`forward_kl`. Memory: besides the
    two log-softmaxes, a sort of ``p`` over ``V`` (``[B, T, V]`` values and indices).
    """
    return _token_mean(tw.adaptive_kl, student_logits, teacher_logits, mask, temperature=temperature, mu=mu)


# ------------------------------------------------------- PLaD and daDPO ---

def plad_loss(student_chosen_logps, student_rejected_logps, chosen_lengths, rejected_lengths, *,
              margin=1.0, smooth=False):
    """PLaD ranking-calibration loss on length-normalised student log-likelihoods.

    ``s_t = log q(y_t)/|y_t|``, ``s_s = log q(y_s)/|y_s|``;
    hinge: ``max(0, δ − s_t + s_s)``; smooth: ``−log σ(s_t − s_s)``.
    Needs no teacher logits. All inputs and the output ``[B]``.
    """
    _same_shape(student_chosen_logps=student_chosen_logps, student_rejected_logps=student_rejected_logps,
                chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    s_t = jnp.asarray(student_chosen_logps, jnp.float32) / _lengths(chosen_lengths)
    s_s = jnp.asarray(student_rejected_logps, jnp.float32) / _lengths(rejected_lengths)
    if smooth:
        return -jax.nn.log_sigmoid(s_t - s_s)
    return jnp.maximum(0.0, margin - s_t + s_s)


def dadpo_loss(student_chosen_logps, student_rejected_logps,
               reference_chosen_logps, reference_rejected_logps, distribution_kl, *,
               beta=0.1, alpha=1.0):
    """daDPO: DPO against the frozen initial student plus a distribution term.

    ``−log σ(β[(log q(y_t) − log q_ref(y_t)) − (log q(y_s) − log q_ref(y_s))]) + α · KL``
    where ``distribution_kl`` is the per-example ``KL(p‖q_θ)`` on the teacher's
    response (e.g. :func:`forward_kl`). Summed log-probs; all inputs ``[B]`` -> ``[B]``.
    """
    _same_shape(student_chosen_logps=student_chosen_logps, student_rejected_logps=student_rejected_logps,
                reference_chosen_logps=reference_chosen_logps,
                reference_rejected_logps=reference_rejected_logps, distribution_kl=distribution_kl)
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    h = beta * ((f32(student_chosen_logps) - f32(reference_chosen_logps))
                - (f32(student_rejected_logps) - f32(reference_rejected_logps)))
    return -jax.nn.log_sigmoid(h) + alpha * f32(distribution_kl)


# -------------------------------------------------------------- metrics ---

def implicit_reward(student_logps, teacher_logps, lengths=None, *, beta=0.1, teacher_lengths=None):
    """The implicit reward without ``log Z``: ``β (log q(y) − log p(y)) [/ |y|]``.

    Divided by the (clamped) length when ``lengths`` is given, as in Eq. 9; across
    tokenizers ``teacher_lengths`` divides the teacher's term by its own count (see
    :func:`dpkd_loss`). Inputs and output ``[B]``. """
    _same_shape(student_logps=student_logps, teacher_logps=teacher_logps, lengths=lengths)
    s, t = jnp.asarray(student_logps, jnp.float32), jnp.asarray(teacher_logps, jnp.float32)
    if lengths is None:
        return beta * (s - t)
    n = _lengths(lengths)
    return beta * (s / n - t / (n if teacher_lengths is None else _lengths(teacher_lengths)))


def reward_margin(chosen_rewards, rejected_rewards):
    """``r(y_t) − r(y_s)``: how far the teacher's response is preferred. ``[B]``."""
    _same_shape(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
    return jnp.asarray(chosen_rewards, jnp.float32) - jnp.asarray(rejected_rewards, jnp.float32)


def preference_accuracy(chosen_rewards, rejected_rewards):
    """1.0 where the implicit reward ranks ``y_t`` above ``y_s``, else 0.0. ``[B]``."""
    return (reward_margin(chosen_rewards, rejected_rewards) > 0).astype(jnp.float32)
