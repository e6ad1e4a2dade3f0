"""overrides.py: every field of every section, misspelt or given a value of the wrong type on the command line,
is refused by ml_collections' own parser and explained in one plain line naming the field and its section."""

import os

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from dpkd_jax import overrides
from dpkd_jax.config import default_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "pair.py")
WRONG = {int: "ten", float: "ten", bool: "maybe"}


def leaves(node, prefix=()):
    """(path, the section, the field's name) of every field under ``node``."""
    for key in node.keys():
        value = node[key]
        if isinstance(value, ml_collections.ConfigDict):
            yield from leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), node, key


FIELDS = list(leaves(overrides.load_config_file([f"--config={CONFIG}"])))


def refused(flag) -> bool:
    """Whether ml_collections' flag parser refuses ``flag`` on the pair config."""
    argv = ["prog", f"--config={CONFIG}", flag]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", CONFIG, flag_values=fv, lock_config=True, sys_argv=argv)
    try:
        fv(argv)
        fv.config  # noqa: B018 -- some versions apply the override on first access
    except Exception:  # noqa: BLE001 -- whatever it raises, the door explains it
        return True
    return False


def test_the_walk_covers_every_section():
    cfg = default_config()
    with_fields = {k for k, v in cfg.items() if isinstance(v, ml_collections.ConfigDict) and v.keys()}
    assert {path[0] for path, _, _ in FIELDS} >= with_fields
    assert len(FIELDS) > 150


@pytest.mark.parametrize("path", [".".join(p) for p, _, _ in FIELDS])
def test_a_misspelt_field_names_itself_its_section_and_the_nearest(path):
    *section, key = path.split(".")
    flag = f"--config.{'.'.join(section + [key + 'x'])}=1"
    assert refused(flag)
    line = overrides.explain_argv(["prog", f"--config={CONFIG}", flag])
    assert line == f"{flag}: config{''.join('.' + s for s in section)} has no field '{key}x' (did you mean " \
                   f"'{key}'" + line.split(f"'{key}'", 1)[1], line
    assert "\n" not in line and "\\" not in line and '"' not in line


TYPED = [(".".join(p), t) for p, node, key in FIELDS if (t := overrides._expected_type(node, key)) in WRONG]


@pytest.mark.parametrize("path, kind", TYPED)
def test_a_wrong_typed_value_names_the_field_the_value_and_the_type(path, kind):
    flag = f"--config.{path}={WRONG[kind]}"
    assert refused(flag), flag
    line = overrides.explain_argv(["prog", f"--config={CONFIG}", flag])
    assert line == f"{flag}: config.{path} must be {overrides.TYPE_NAMES[kind]}, got '{WRONG[kind]}'"


def test_good_overrides_are_not_explained_away():
    for flag in ("--config.train.steps=3", "--config.train.lr=1e-3", "--config.train.lr=1", "--config.data.packing=True",
                 "--config.eval.seeds=(1,2)", "--config.method=kd", "--config.check.memory_limit_gib=4.0"):
        assert not refused(flag), flag
        assert overrides.explain_argv(["prog", f"--config={CONFIG}", flag]) is None, flag


def test_a_field_below_a_value_and_an_unknown_section():
    argv = ["prog", f"--config={CONFIG}"]
    steps = overrides.load_config_file(argv).train.steps
    assert overrides.explain_argv(argv + ["--config.train.steps.max=3"]) == (
        f"--config.train.steps.max=3: config.train.steps is a value ({steps}), not a section with fields")
    assert overrides.explain_argv(argv + ["--config.trian.steps=3"]) == (
        "--config.trian.steps=3: config has no field 'trian' (did you mean 'train'?)")
