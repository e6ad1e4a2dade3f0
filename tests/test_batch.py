"""The typed batch: a pytree whose absent fields are empty nodes; built by name, refusing
unknown names; the teacher's own tokens as a typed view."""

import jax
import numpy as np
import pytest

from dpkd_jax.batch import Batch, TeacherView


def _rows(**extra):
    a = lambda *s: np.zeros(s, np.int32)
    return {"prompt_ids": a(2, 3), "prompt_mask": a(2, 3), "response_ids": a(2, 4), "response_mask": a(2, 4), **extra}


def test_absent_fields_are_empty_pytree_nodes():
    plain = Batch.of(_rows())
    assert len(jax.tree.leaves(plain)) == 4 and plain.lm_ids is None and plain.rows == 2
    with_lm = Batch.of(_rows(lm_ids=np.zeros((2, 5), np.int32)))
    assert len(jax.tree.leaves(with_lm)) == 5
    # a different structure, so a jitted step compiles each variant once and never tests keys
    assert jax.tree.structure(plain) != jax.tree.structure(with_lm)
    doubled = jax.jit(lambda b: jax.tree.map(lambda x: x + 1, b))(with_lm)
    assert isinstance(doubled, Batch) and int(doubled.lm_ids[0, 0]) == 1


def test_the_teacher_view_is_built_from_dotted_names():
    b = Batch.of(_rows(**{"teacher_view.prompt_ids": np.ones((2, 7), np.int32),
                          "teacher_view.prompt_mask": np.ones((2, 7), np.int32)}))
    assert isinstance(b.teacher_view, TeacherView) and b.teacher_view.prompt_ids.shape == (2, 7)
    assert b.teacher_view.yt_ids is None
    assert b.replace(lm_ids=np.ones((2, 3))).teacher_view is b.teacher_view


def test_unknown_fields_are_named():
    with pytest.raises(ValueError, match=r"unknown fields \['poison', 'teacher_view.yz_ids'\]"):
        Batch.of(_rows(poison=np.zeros(2), **{"teacher_view.yz_ids": np.zeros(2)}))
