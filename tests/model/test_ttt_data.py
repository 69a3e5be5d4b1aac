import numpy as np
import pytest

from submission.arc.formats import build_tokenizer, get_format
from submission.arc.grids import Pair, Task, as_grid
from submission.model.ttt_data import build_ttt_data


@pytest.fixture(scope="module")
def fmt(tmp_path_factory):
    return get_format("qwen-chat", build_tokenizer("qwen-chat"))


def _task(n=3, side=3):
    rng = np.random.default_rng(1)
    pairs = tuple(Pair(as_grid(rng.integers(0, 10, (side, side))), as_grid(rng.integers(0, 10, (side, 2))))
                  for _ in range(n))
    return Task("t", pairs, (as_grid([[1, 2]]),))


def test_samples_are_leave_one_out_and_distinct(fmt):
    task = _task()
    data = build_ttt_data(task, fmt, np.random.default_rng(0), max_samples=20, max_len=4096)
    assert len(data.samples) == 20
    assert len({s.transform for s in data.samples}) == 20
    first = data.samples[0]
    assert first.transform.dihedral == 0 and first.transform.order == (0, 1, 2)
    for s in data.samples:
        assert s.transform.order[-1] == s.query and sorted(s.transform.order) == [0, 1, 2]
        ids, mask = fmt.encode_training([s.transform.apply_pair(task.train[i]) for i in s.transform.order])
        assert s.ids == ids and s.mask == mask
    assert {s.query for s in data.samples} == {0, 1, 2}


def test_deterministic_per_rng(fmt):
    a = build_ttt_data(_task(), fmt, np.random.default_rng(5), max_samples=10, max_len=4096)
    b = build_ttt_data(_task(), fmt, np.random.default_rng(5), max_samples=10, max_len=4096)
    c = build_ttt_data(_task(), fmt, np.random.default_rng(6), max_samples=10, max_len=4096)
    assert [s.ids for s in a.samples] == [s.ids for s in b.samples]
    assert [s.ids for s in a.samples] != [s.ids for s in c.samples]


def test_long_samples_lose_context_then_are_counted(fmt):
    task = _task(n=3, side=10)
    one_pair = len(fmt.encode_training([task.train[0]])[0])
    data = build_ttt_data(task, fmt, np.random.default_rng(0), max_samples=6, max_len=one_pair + 20)
    assert data.samples and all(len(s.ids) <= one_pair + 20 for s in data.samples)
    assert all(s.dropped_demos == 2 for s in data.samples) and data.shortened == len(data.samples)
    none_fit = build_ttt_data(task, fmt, np.random.default_rng(0), max_samples=6, max_len=10)
    assert none_fit.samples == [] and none_fit.too_long >= 6


def test_skip_first_output(fmt):
    task = _task()
    data = build_ttt_data(task, fmt, np.random.default_rng(0), max_samples=2, max_len=4096,
                          skip_first_output=True)
    s = data.samples[0]
    out0 = fmt.encode_answer(task.train[0].output)
    first_masked = s.mask.index(True)
    assert s.ids[first_masked:first_masked + len(out0)] != out0 or first_masked > len(s.ids) // 3
    assert sum(s.mask) == sum(len(fmt.encode_answer(p.output)) for p in task.train[1:])


def test_single_demo_task(fmt):
    task = Task("one", (Pair(as_grid([[1, 2]]), as_grid([[3]])),), (as_grid([[1]]),))
    data = build_ttt_data(task, fmt, np.random.default_rng(0), max_samples=8, max_len=4096)
    assert len(data.samples) == 8 and all(s.query == 0 for s in data.samples)
