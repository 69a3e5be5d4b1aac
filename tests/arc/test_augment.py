"""Property tests of submission.arc.augment: exact invertibility, D8 group laws, composition,
and the samplers' distinctness and determinism."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from submission.arc.augment import (
    IDENTITY,
    Transform,
    dihedral_apply,
    dihedral_compose,
    dihedral_inverse,
    random_colour_perm,
    sample_transforms,
    view_transforms,
)
from submission.errors import ConfigError
from submission.arc.grids import Pair, Task

FAST = settings(max_examples=60, deadline=None)
PROBE = np.arange(12, dtype=np.uint8).reshape(3, 4) % 10  # non-square, no symmetry


# -- strategies ------------------------------------------------------------------------------
@st.composite
def grids(draw, max_side: int = 30) -> np.ndarray:
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    return draw(arrays(np.uint8, (h, w), elements=st.integers(0, 9)))


dihedrals = st.integers(0, 7)
colour_perms = st.permutations(range(10)).map(tuple)


@st.composite
def tasks(draw) -> Task:
    small = grids(max_side=8)
    n_train = draw(st.integers(1, 5))
    n_test = draw(st.integers(1, 3))
    train = tuple(Pair(draw(small), draw(small)) for _ in range(n_train))
    test_inputs = tuple(draw(small) for _ in range(n_test))
    test_outputs = tuple(draw(small) for _ in range(n_test)) if draw(st.booleans()) else None
    return Task(id=draw(st.text("0123456789abcdef", min_size=8, max_size=8)), train=train,
                test_inputs=test_inputs, test_outputs=test_outputs)


def transforms_for(n_demos: int) -> st.SearchStrategy[Transform]:
    orders = st.one_of(st.none(), st.permutations(range(n_demos)).map(tuple))
    return st.builds(Transform, dihedrals, colour_perms, orders)


@st.composite
def task_and_transforms(draw, count: int = 1):
    task = draw(tasks())
    return (task, *(draw(transforms_for(len(task.train))) for _ in range(count)))


def same_grid(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b))


def same_task(a: Task, b: Task) -> bool:
    if a.id != b.id or len(a.train) != len(b.train) or len(a.test_inputs) != len(b.test_inputs):
        return False
    if (a.test_outputs is None) != (b.test_outputs is None):
        return False
    pairs = all(same_grid(p.input, q.input) and same_grid(p.output, q.output)
                for p, q in zip(a.train, b.train))
    tests = all(same_grid(x, y) for x, y in zip(a.test_inputs, b.test_inputs))
    outs = a.test_outputs is None or all(same_grid(x, y)
                                         for x, y in zip(a.test_outputs, b.test_outputs))
    return pairs and tests and outs


def copy_task(t: Task) -> Task:
    outs = None if t.test_outputs is None else tuple(g.copy() for g in t.test_outputs)
    return Task(t.id, tuple(Pair(p.input.copy(), p.output.copy()) for p in t.train),
                tuple(g.copy() for g in t.test_inputs), outs)


# -- D8 --------------------------------------------------------------------------------------
def test_d8_definition():
    for k in range(4):
        assert same_grid(dihedral_apply(PROBE, k), np.rot90(PROBE, k))
        assert same_grid(dihedral_apply(PROBE, k + 4), np.rot90(PROBE.T, k))


def test_d8_elements_pairwise_distinct():
    images = [dihedral_apply(PROBE, k) for k in range(8)]
    for a, b in itertools.combinations(images, 2):
        assert not same_grid(a, b)


def test_d8_group_laws():
    for a in range(8):
        assert dihedral_compose(0, a) == a == dihedral_compose(a, 0)
        inv = dihedral_inverse(a)
        assert 0 <= inv < 8
        assert dihedral_compose(a, inv) == 0 == dihedral_compose(inv, a)
        for b in range(8):
            assert 0 <= dihedral_compose(a, b) < 8
    for a, b, c in itertools.product(range(8), repeat=3):
        assert (dihedral_compose(dihedral_compose(a, b), c)
                == dihedral_compose(a, dihedral_compose(b, c)))


@FAST
@given(grids(), dihedrals, dihedrals)
def test_d8_compose_matches_sequential(g, a, b):
    expected = dihedral_apply(dihedral_apply(g, b), a)
    assert same_grid(dihedral_apply(g, dihedral_compose(a, b)), expected)


@FAST
@given(grids(), dihedrals)
def test_shapes_swap_for_odd_elements(g, k):
    h, w = g.shape
    out = dihedral_apply(g, k)
    swaps = k in (1, 3, 4, 6)  # odd rotations, and the transpose-based elements with even rotation
    assert out.shape == ((w, h) if swaps else (h, w))


def test_non_square_shape_swap_examples():
    g = np.zeros((2, 5), dtype=np.uint8)
    assert [Transform(k).apply_grid(g).shape for k in range(8)] == [
        (2, 5), (5, 2), (2, 5), (5, 2), (5, 2), (2, 5), (5, 2), (2, 5)]


# -- Transform on grids, pairs, tasks ---------------------------------------------------------
@FAST
@given(grids(), dihedrals, colour_perms)
def test_grid_roundtrip(g, k, colours):
    t = Transform(k, colours)
    original = g.copy()
    out = t.apply_grid(g)
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    assert not np.shares_memory(out, g)
    assert same_grid(g, original)  # not mutated
    back = t.invert_grid(out)
    assert same_grid(back, g) and back.flags.c_contiguous
    assert same_grid(t.apply_grid(t.invert_grid(g)), g)


@FAST
@given(grids(), dihedrals, colour_perms)
def test_colour_map_semantics(g, k, colours):
    out = Transform(0, colours).apply_grid(g)
    assert same_grid(out, np.array(colours, dtype=np.uint8)[g])
    assert same_grid(Transform(k, colours).apply_grid(g), dihedral_apply(out, k))


@FAST
@given(grids(max_side=10), grids(max_side=10), dihedrals, colour_perms)
def test_pair_roundtrip(a, b, k, colours):
    t = Transform(k, colours)
    p = Pair(a, b)
    q = t.apply_pair(p)
    assert isinstance(q, Pair)
    back = t.invert_pair(q)
    assert same_grid(back.input, a) and same_grid(back.output, b)


@FAST
@given(task_and_transforms())
def test_task_roundtrip_and_no_mutation(args):
    task, t = args
    snapshot = copy_task(task)
    out = t.apply_task(task)
    assert same_task(task, snapshot)
    assert out.id == task.id
    assert (out.test_outputs is None) == (task.test_outputs is None)
    order = range(len(task.train)) if t.order is None else t.order
    for i, j in enumerate(order):
        expected = t.apply_pair(task.train[j])
        assert same_grid(out.train[i].input, expected.input)
        assert same_grid(out.train[i].output, expected.output)
    assert same_task(t.invert_task(out), task)
    assert same_task(t.inverse().apply_task(out), task)


@FAST
@given(task_and_transforms(count=2))
def test_compose_agrees_with_sequential(args):
    task, s, o = args
    assert same_task(s.compose(o).apply_task(task), s.apply_task(o.apply_task(task)))


@FAST
@given(task_and_transforms())
def test_inverse_composes_to_identity(args):
    task, t = args
    assert t.compose(t.inverse()).is_identity
    assert t.inverse().compose(t).is_identity
    assert t.inverse().inverse() == t
    assert same_task(t.inverse().apply_task(task), t.invert_task(task))


@FAST
@given(st.integers(1, 6).flatmap(lambda n: st.tuples(*(transforms_for(n) for _ in range(3)))))
def test_compose_is_associative(ts):
    a, b, c = ts
    assert a.compose(b).compose(c) == a.compose(b.compose(c))
    assert IDENTITY.compose(a) == a == a.compose(IDENTITY)


def test_identity_and_str():
    assert IDENTITY.is_identity and Transform(order=(0, 1, 2)).is_identity
    assert not Transform(1).is_identity and not Transform(order=(1, 0)).is_identity
    t = Transform(5, (0, 3, 1, 2, 4, 5, 6, 7, 8, 9), (2, 0, 1))
    assert str(t) == "D8[5] colours=0312456789 order=(2,0,1)"
    assert "order=None" in str(IDENTITY)


def test_transform_normalises_and_hashes():
    t = Transform(np.int64(3), list(range(10)), [1, 0])
    assert t == Transform(3, tuple(range(10)), (1, 0))
    assert hash(t) == hash(Transform(3, tuple(range(10)), (1, 0)))
    assert isinstance(t.colours, tuple) and isinstance(t.order, tuple)


# -- bad arguments ---------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [
    {"dihedral": 8}, {"dihedral": -1}, {"dihedral": True}, {"dihedral": 1.0},
    {"colours": (0, 0, 2, 3, 4, 5, 6, 7, 8, 9)}, {"colours": tuple(range(9))},
    {"colours": tuple(range(1, 11))}, {"order": (0, 2)}, {"order": (1, 1)},
])
def test_bad_transform_arguments(kwargs):
    with pytest.raises(ConfigError):
        Transform(**kwargs)


def test_bad_dihedral_functions():
    for call in (lambda: dihedral_apply(PROBE, 8), lambda: dihedral_inverse(-1),
                 lambda: dihedral_compose(0, 8)):
        with pytest.raises(ConfigError):
            call()


def test_order_length_mismatch():
    task = Task("t", (Pair(PROBE, PROBE), Pair(PROBE, PROBE)), (PROBE,))
    with pytest.raises(ConfigError):
        Transform(order=(0, 1, 2)).apply_task(task)
    with pytest.raises(ConfigError):
        Transform(order=(0,)).invert_task(task)
    with pytest.raises(ConfigError):
        Transform(order=(1, 0)).compose(Transform(order=(0, 2, 1)))


def test_compose_with_none_order():
    a, b = Transform(order=None), Transform(2, order=(2, 0, 1))
    assert a.compose(b).order == (2, 0, 1) == b.compose(a).order


# -- samplers --------------------------------------------------------------------------------
def test_random_colour_perm():
    rng = np.random.default_rng(1)
    for keep in (False, True):
        for _ in range(50):
            perm = random_colour_perm(rng, keep)
            assert sorted(perm) == list(range(10))
            if keep:
                assert perm[0] == 0


@pytest.mark.parametrize("keep_background", [False, True])
def test_sample_transforms_basic(keep_background):
    ts = sample_transforms(np.random.default_rng(0), 40, 3, keep_background=keep_background)
    assert len(ts) == 40 and len(set(ts)) == 40
    assert ts[0] == IDENTITY
    for t in ts:
        assert t.order is None or len(t.order) == 3
        if keep_background:
            assert t.colours[0] == 0
    assert any(t.dihedral != 0 for t in ts) and any(t.order is not None for t in ts)


def test_sample_transforms_determinism():
    a = sample_transforms(np.random.default_rng(7), 20, 4)
    b = sample_transforms(np.random.default_rng(7), 20, 4)
    c = sample_transforms(np.random.default_rng(8), 20, 4)
    assert a == b and a != c


def test_sample_transforms_options():
    ts = sample_transforms(np.random.default_rng(0), 8, 2, permute_colours=False,
                           shuffle_order=False)
    assert sorted(t.dihedral for t in ts) == list(range(8))
    assert all(t.colours == tuple(range(10)) and t.order is None for t in ts)
    ts = sample_transforms(np.random.default_rng(0), 20, 2, shuffle_order=False,
                           dihedral=False, keep_background=True)
    assert len(set(ts)) == 20
    assert all(t.dihedral == 0 and t.order is None and t.colours[0] == 0 for t in ts)


def test_sample_transforms_small_spaces():
    rng = np.random.default_rng(0)
    # dihedral off, colours off: only the 3! demo orders remain.
    ts = sample_transforms(rng, 6, 3, dihedral=False, permute_colours=False)
    assert len(set(ts)) == 6 and ts[0] == IDENTITY
    ts = sample_transforms(rng, 5, 3, dihedral=False, permute_colours=False,
                           include_identity=False)
    assert len(set(ts)) == 5 and IDENTITY not in ts
    with pytest.raises(ConfigError, match="6"):
        sample_transforms(rng, 7, 3, dihedral=False, permute_colours=False)
    with pytest.raises(ConfigError, match="8"):
        sample_transforms(rng, 9, 1, permute_colours=False)
    with pytest.raises(ConfigError):
        sample_transforms(rng, 2, 1, dihedral=False, permute_colours=False)
    assert sample_transforms(rng, 0, 3) == []
    with pytest.raises(ConfigError):
        sample_transforms(rng, -1, 3)


def test_sample_transforms_large_space_ok():
    ts = sample_transforms(np.random.default_rng(3), 100, 1, keep_background=True)
    assert len(set(ts)) == 100 and all(t.colours[0] == 0 for t in ts)
    assert math.factorial(9) * 8 > 100


@pytest.mark.parametrize("n_views", [1, 5, 8, 9, 16, 23, 40])
@pytest.mark.parametrize("shuffle_order", [False, True])
def test_view_transforms(n_views, shuffle_order):
    views = view_transforms(np.random.default_rng(0), n_views, 4, shuffle_order=shuffle_order)
    assert len(views) == n_views and len(set(views)) == n_views
    assert len({(v.dihedral, v.colours) for v in views}) == n_views
    assert views[0] == IDENTITY and views[0].order is None
    assert [v.dihedral for v in views] == [i % 8 for i in range(n_views)]
    assert all(v.colours == tuple(range(10)) for v in views[:8])
    assert all(v.colours != tuple(range(10)) for v in views[8:])
    if not shuffle_order:
        assert all(v.order is None for v in views)


def test_view_transforms_keep_background_and_determinism():
    a = view_transforms(np.random.default_rng(5), 24, 3, keep_background=True)
    b = view_transforms(np.random.default_rng(5), 24, 3, keep_background=True)
    assert a == b and all(v.colours[0] == 0 for v in a)
    assert view_transforms(np.random.default_rng(5), 0, 3) == []
    with pytest.raises(ConfigError):
        view_transforms(np.random.default_rng(5), -1, 3)
