"""One device mesh, one table of logical-axis -> mesh-axis rules, and the shardings
of params, optimizer state and batches derived from them.

The mesh has four named axes: ``data`` (pure data parallel), ``fsdp`` (data
parallel whose members also split the parameters, ZeRO-3 style), ``context`` (the
sequence of a forward split across devices; attention gathers keys and values,
``models/attention.py``) and ``tensor`` (Megatron-style splitting of heads, MLP and
vocabulary). A batch is split over ``data`` x ``fsdp``. Every parameter is sharded by the logical axis names of the
parameter table the caller passes (``models.param_table``), through rules that
are data (:data:`DEFAULT_RULES`, overridable per run with ``config.mesh.rules``).

A leaf module: it imports no model. Activation constraints read the mesh from
JAX's own mesh context (``jax.set_mesh``), never from a module global.
"""

from __future__ import annotations

import logging
import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from .errors import InputError

AXES = ("data", "fsdp", "context", "tensor")
BATCH = ("data", "fsdp")

# logical axis -> mesh axes (None: replicated along it). One table for every model, as a
# hashable tuple of pairs so it can sit in a model Config (the static part of a jit).
DEFAULT_RULES = (
    ("batch", BATCH),
    ("length", "context"),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("layers", None),
)
# Axes that fall back to replication (with a log line) when the mesh does not divide them:
# GPT-2's vocabulary (50257) is odd; KV heads fewer than the tensor axis (GQA/MQA: 2 KV heads
# on tensor=8) are replicated on every tensor shard, the way Megatron and MaxText do it, while
# the query heads stay split. Any other indivisible parameter axis is a config error.
SOFT = {"vocab", "kv_heads"}


def make_rules(overrides=None) -> tuple:
    """DEFAULT_RULES with ``overrides`` (``{"embed": None, ...}``) applied, as a hashable tuple."""
    rules = dict(DEFAULT_RULES)
    for k, v in dict(overrides or {}).items():
        if k not in rules:
            raise InputError(f"config.mesh.rules: unknown logical axis {k!r}; known: {sorted(rules)}")
        rules[k] = tuple(v) if isinstance(v, (list, tuple)) else (v or None)
    return tuple(rules.items())


# A pod's config checked on one host: say how to check it for the pod.
_POD_HINT = ("; on a machine with fewer devices than the run's, check it for the run's count with "
             "--config.mode=check --config.check.devices=N")


def mesh_shape(sizes: dict, n_devices: int) -> dict:
    """Resolve ``{"data": -1, "fsdp": 2, "context": 1, "tensor": 1}`` (-1: the rest) against ``n_devices``."""
    sizes = {a: int(sizes.get(a, 1)) for a in AXES}
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise InputError(f"config.mesh: at most one axis may be -1, got {sizes}")
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if any(s == 0 or s < -1 for s in sizes.values()):
        raise InputError(f"config.mesh: sizes must be positive or -1, got {sizes}")
    if free:
        if n_devices % fixed:
            raise InputError(f"config.mesh: {n_devices} devices are not divisible by the fixed axes {sizes}{_POD_HINT}")
        sizes[free[0]] = n_devices // fixed
    if math.prod(sizes.values()) != n_devices:
        raise InputError(f"config.mesh: {sizes} has {math.prod(sizes.values())} devices but there are {n_devices}"
                         f"{_POD_HINT}")
    return sizes


def make_mesh(sizes: dict | None = None, devices=None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape(dict(sizes or {"data": -1}), len(devices))
    try:
        from jax.experimental import mesh_utils
        arr = mesh_utils.create_device_mesh(tuple(shape[a] for a in AXES), devices=devices)
    except Exception:  # unusual topologies: plain order
        arr = np.array(devices).reshape(tuple(shape[a] for a in AXES))
    return Mesh(arr, AXES)


def spec_for(logical_axes, shape, mesh: Mesh, rules=None, name="", soft=False) -> P:
    """The PartitionSpec of one array from its logical axes, checking divisibility
    (``soft``: replicate any axis that does not divide, as for activations)."""
    rules = dict(rules or DEFAULT_RULES)
    out, used = [], set()
    for dim, ax in zip(shape, logical_axes):
        mesh_ax = rules.get(ax) if ax else None
        # a mesh without an axis the rules name (one built by hand, before the context axis) leaves it out
        axes = tuple(a for a in ((mesh_ax,) if isinstance(mesh_ax, str) else (mesh_ax or ()))
                     if a not in used and a in mesh.shape)
        size = math.prod(mesh.shape[a] for a in axes)
        if axes and dim % size:
            if soft:
                axes = ()
            elif ax in SOFT:
                logging.info("sharding: %s axis %r (%d) is not divisible by mesh %s=%d; replicated", name, ax, dim,
                             axes, size)
                axes = ()
            else:
                raise InputError(f"sharding: {name or 'array'} axis {ax!r} has size {dim}, which mesh axes {axes} "
                                 f"(size {size}) do not divide; change config.mesh")
        used.update(axes)
        out.append(axes[0] if len(axes) == 1 else (axes or None))
    return P(*out)


def param_shardings(table: dict, mesh: Mesh, rules=None) -> dict[str, NamedSharding]:
    """Parameter name -> NamedSharding, from ``name -> (shape, logical axes, ...)``: the
    models' ``param_info``, read from each NNX variable's metadata."""
    return {name: NamedSharding(mesh, spec_for(entry[1], entry[0], mesh, rules, name))
            for name, entry in table.items()}


def like_params(tree, params: dict, params_sharding: dict, mesh: Mesh):
    """Shardings for a tree (optimizer state) whose leaves mirror the params: a leaf under
    a dict key naming a param, with that param's shape, gets the param's sharding;
    anything else (step counts, scalars) is replicated."""
    rep = NamedSharding(mesh, P())

    def pick(path, leaf):
        for k in reversed(path):
            name = getattr(k, "key", None)
            if name in params_sharding and tuple(leaf.shape) == tuple(params[name].shape):
                return params_sharding[name]
        return rep
    return jax.tree_util.tree_map_with_path(pick, tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH)


def check_batch(batch_size: int, mesh: Mesh, field="train.batch_size"):
    dp = data_parallel_size(mesh)
    if batch_size % dp:
        raise InputError(f"config.{field}: {batch_size} is not divisible by the data-parallel size {dp} "
                         f"(mesh data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']})")


def check_heads(n_heads: int, mesh: Mesh, which="model"):
    t = mesh.shape["tensor"]
    if n_heads % t:
        raise InputError(f"config.mesh.tensor: {t} does not divide the {which}'s {n_heads} attention heads")


def put(tree, shardings):
    """Place host or device arrays onto global ``shardings`` (a matching tree or one
    sharding for all). Works with several processes: each supplies the same global
    values and only its addressable shards are transferred."""
    def one(x, s):
        if isinstance(x, jax.Array):
            if x.sharding == s:
                return x
            if not x.is_fully_addressable:
                return jax.jit(lambda y: y, out_shardings=s)(x)
            if jax.process_count() == 1:
                return jax.device_put(x, s)
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])
    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda x: one(x, shardings), tree)
    return jax.tree.map(one, tree, shardings)


def copy_to(tree, shardings):
    """A fresh copy of ``tree`` on ``shardings`` (safe to donate; the input stays valid)."""
    import jax.numpy as jnp
    return jax.jit(lambda t: jax.tree.map(jnp.copy, t), out_shardings=shardings)(tree)


def to_host(x) -> np.ndarray:
    """A global array as one numpy array on every process."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def put_batch(tree, mesh: Mesh | None):
    """Host batch arrays -> global arrays split over the batch axes (replicated when the
    batch does not divide). Without a mesh, returned as they are."""
    if mesh is None:
        return tree
    n = jax.tree.leaves(tree)[0].shape[0]
    return put(tree, batch_sharding(mesh) if n % data_parallel_size(mesh) == 0 else replicated(mesh))


# Activations: the model marks its hidden states, heads and KV caches with logical
# axes through :func:`constrain`; inside a mesh context (``jax.set_mesh``, which the
# train step and sampling enter) they become sharding constraints, so XLA keeps the
# batch split over data x fsdp and gathers FSDP weights instead of replicating activations.

def mesh_context(mesh: Mesh):
    """JAX's own mesh context (``jax.set_mesh``; ``jax.sharding.use_mesh`` on releases that have it)."""
    use = getattr(jax, "set_mesh", None) or getattr(jax.sharding, "use_mesh")
    return use(mesh)


def constrain(x, logical_axes, rules=DEFAULT_RULES):
    """``x`` constrained to its logical axes on the context's mesh; unchanged outside one."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    spec = spec_for(logical_axes, x.shape, mesh, rules, soft=True)
    return jax.lax.with_sharding_constraint(x, spec)


class Placement:
    """Where every model array lives, decided once per run from ``config.mesh``: the mesh,
    and the rules for the teacher and for the student (``shard_student=False`` replicates
    a small student's embedding axis, i.e. the whole student, for pure data parallelism)."""

    def __init__(self, mesh_cfg, devices=None):
        mesh_cfg = dict(mesh_cfg)
        self.mesh = make_mesh({a: mesh_cfg.get(a, 1) for a in AXES}, devices=devices)
        self.teacher_rules = make_rules(mesh_cfg.get("rules"))
        self.student_rules = self.teacher_rules if mesh_cfg.get("shard_student", True) else \
            make_rules({**dict(mesh_cfg.get("rules") or {}), "embed": None})

    def rules(self, role: str) -> tuple:
        return self.student_rules if role == "student" else self.teacher_rules

    def params(self, table: dict, role: str) -> dict[str, NamedSharding]:
        return param_shardings(table, self.mesh, self.rules(role))
