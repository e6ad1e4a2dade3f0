"""runspec.py: the typed, frozen RunSpec that the ConfigDict becomes at the door, and nothing past it reads."""

import dataclasses
import glob
import importlib.util
import os

import ml_collections
import pytest

from dpkd_jax.config import default_config, validate
from dpkd_jax.errors import InputError
from dpkd_jax.preflight import preflight
from dpkd_jax.runspec import TYPE_NAMES, RunSpec, config_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _leaves(spec, prefix=""):
    """(dotted path, value, annotation) of every scalar field of a spec, sections walked."""
    import typing
    hints = typing.get_type_hints(type(spec))
    for f in dataclasses.fields(spec):
        value = spec.__dict__[f.name]
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value, hints[f.name]


def _tree_with(path, value):
    """The default config as a plain tree with ``value`` at dotted ``path``."""
    tree = default_config().to_dict()
    *head, last = path.split(".")
    node = tree
    for h in head:
        node = node[h]
    node[last] = value
    return tree


def test_the_default_config_is_the_spec_s_defaults_and_reads_back_unchanged():
    assert RunSpec.of(default_config()) == RunSpec()
    assert config_dict(RunSpec()).to_dict() == default_config().to_dict()


def test_every_example_config_loads_into_a_run_spec():
    loaded = 0
    for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))):
        module_spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        scales = getattr(module, "SCALES", {None: None})
        for scale in scales:
            cfg = module.get_config() if scale is None else module.get_config(scale)
            spec = RunSpec.of(cfg)
            assert spec.method == cfg.method and spec.train.steps == cfg.train.steps, path
            assert spec.experiment.enabled == cfg.experiment.enabled and spec.demo.enabled == cfg.demo.enabled
            loaded += 1
    assert loaded >= 10


def test_every_field_misspelt_or_wrongly_typed_is_one_line_naming_it():
    """What the command line refuses (test_overrides), a config file's own blocks refuse here: each field of
    every section, misspelt, and (ints, floats, bools, strings) given a value of another type."""
    checked = 0
    for path, value, kind in _leaves(RunSpec()):
        *head, last = path.split(".")
        where = ".".join(["config", *head])
        tree = _tree_with(path, value)
        node = tree
        for h in head:
            node = node[h]
        node[last + "x"] = node.pop(last)
        with pytest.raises(InputError) as e:
            RunSpec.of(tree)
        assert str(e.value).startswith(f"{where} has no field '{last}x' (did you mean '{last}'"), str(e.value)
        assert "\n" not in str(e.value)
        if kind in (int, float, bool, str):
            wrong = "ten" if kind is not str else 10
            with pytest.raises(InputError) as e:
                RunSpec.of(_tree_with(path, wrong))
            assert str(e.value) == f"config.{path} must be {TYPE_NAMES[kind]}, got {wrong!r}"
        checked += 1
    assert checked > 200  # 235 fields in 27 sections at this writing


def test_a_config_file_s_own_block_with_an_unknown_field_is_named():
    c = default_config()
    c.experiment = ml_collections.ConfigDict({"enabled": True, "stepz": 3})
    with pytest.raises(InputError, match=r"^config.experiment has no field 'stepz' \(did you mean 'steps'\?\)$"):
        validate(c)


def test_the_spec_is_frozen_and_replace_makes_a_new_one():
    spec = RunSpec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.train.steps = 3
    new = spec.replace({"train.steps": 3, "mesh.rules.kv_heads": None}, seed=7)
    assert (new.train.steps, new.mesh.rules["kv_heads"], new.seed) == (3, None, 7)
    assert (spec.train.steps, spec.mesh.rules["kv_heads"], spec.seed) == (1000, "tensor", 0)
    assert new.loss == spec.loss and new.to_dict()["train"]["steps"] == 3


def test_ints_are_floats_where_a_float_is_typed_and_tuples_take_a_bare_word():
    spec = RunSpec.of(_tree_with("train.lr", 1))
    assert spec.train.lr == 1.0 and isinstance(spec.train.lr, float)
    assert RunSpec.of(_tree_with("student.lora.targets", "q")).student.lora.targets == ("q",)


def test_check_goes_on_past_a_hub_id_that_is_not_cached(hf_pair, tmp_path, monkeypatch):
    """The teacher is a hub id not in the cache: the student, the data, the mesh and the work dir are still
    checked, and the last line says what waits for the fetch."""
    _, student, train = hf_pair
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hub"))
    c = default_config()
    c.mode, c.workdir = "check", str(tmp_path / "w")
    c.teacher.path, c.student.path, c.data.train = "org/not-cached", student, train
    c.data.max_prompt_length, c.data.max_length, c.train.batch_size = 96, 128, 4
    lines = preflight(validate(c), out=lambda s: None)
    assert "teacher: org/not-cached is not cached yet; the run fetches it" in lines, lines
    assert any(l.startswith("student: ") and "gpt2, 1 layers" in l for l in lines), lines
    assert any(l.startswith("train data: ") for l in lines) and any(l.startswith("mesh: ") for l in lines), lines
    assert any(l.startswith("work dir: ") for l in lines), lines
    assert lines[-1].startswith("models not fetched yet"), lines


def _package_imports():
    """{module: (top-level package imports, package imports inside functions)} of dpkd_jax, by its source."""
    import ast
    pkg = os.path.join(ROOT, "dpkd_jax")
    out = {}
    for path in glob.glob(os.path.join(pkg, "**", "*.py"), recursive=True):
        rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__")
        here = rel if path.endswith("__init__.py") else rel.rsplit(".", 1)[0]
        tree = ast.parse(open(path).read())
        top, inner = set(), set()
        for node in ast.walk(tree):
            if not (isinstance(node, ast.ImportFrom) and node.level):
                continue
            base = ".".join(here.split(".")[:len(here.split(".")) - node.level + 1] + ([node.module] if node.module else []))
            (top if node in tree.body else inner).update(f"{base}.{a.name}" for a in node.names)
        out[rel] = (top, inner)
    # "from .x import name": the module x.name when it is one, else x (a name defined in x)
    pick = lambda names: {n if n in out else n.rsplit(".", 1)[0] for n in names}
    return {m: (pick(top), pick(inner)) for m, (top, inner) in out.items()}


def test_the_package_has_no_import_cycle_and_imports_lazily_only_at_the_entry_points():
    graph = _package_imports()
    edges = {m: {d for d in top if d in graph and d != m} for m, (top, _) in graph.items()}
    state = {}

    def visit(m, stack):
        state[m] = "open"
        for d in edges[m]:
            assert state.get(d) != "open", f"import cycle: {' -> '.join(stack + [m, d])}"
            if d not in state:
                visit(d, stack + [m])
        state[m] = "done"
    for m in edges:
        if m not in state:
            visit(m, [])
    lazy = {m: inner for m, (_, inner) in graph.items() if inner and not m.startswith("dpkd_jax.tools")
            and m != "dpkd_jax.main"}
    # the optional lm-eval extra is imported only when a run asks for it
    assert all(i == {"dpkd_jax.lm_eval_adapter"} for i in lazy.values()), lazy
    assert not any("dpkd_jax.tools" in d for m, (top, _) in graph.items() if not m.startswith("dpkd_jax.tools")
                   for d in top), "a library module imports a tool"
