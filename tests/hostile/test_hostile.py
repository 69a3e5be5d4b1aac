"""Hostile input: task ids that look like paths, deeply nested JSON and huge integers, corrupt
per-task records and model files, outputs that would overwrite inputs, and a rerun with another
model. Every case must end in a clean exit 2 naming the file, or a run that redoes what it cannot
trust; nothing may be written or deleted outside the work directory and the output file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from submission import cli
from submission.errors import InputError
from submission.runtime.modelfiles import check_model_weights, check_safetensors, model_identity
from submission.runtime.paths import check_finetune_paths, check_run_paths, inside, same_file, task_file_name
from submission.arc.submit import read_record, validate_submission, valid_record
from submission.arc.tasks import tasks_to_challenges
from tests.helpers import fake_model, random_task, run_cli, write_challenges, write_safetensors
from tests.helpers import cli_subprocess as _subprocess
from tests.helpers import one_error_line as _one_error_line

HOSTILE_IDS = ["../../x", "..", ".", "/etc/passwd", "a/b", "a\\b", "a\nb", "tab\there", "\x00",
               "\x1b[2J", "\ud800", "\udfff", "\ud800x", "", " ", "-rf", "_", ".hidden",
               "ABC", "abc", "Abc", "a" * 65, "a" * 300, "é", "名前", "a.b", "a_b",
               "con", "x" * 64]


# --- task_file_name --------------------------------------------------------------------------

def test_plain_arc_ids_are_kept():
    for tid in ("00576224", "007bbfb7", "abc_def-12", "x" * 64):
        assert task_file_name(tid) == tid


@pytest.mark.parametrize("tid", HOSTILE_IDS)
def test_every_id_gets_a_safe_name(tid, tmp_path):
    name = task_file_name(tid)
    assert name == task_file_name(tid)  # deterministic
    assert name not in ("", ".", "..") and not name.startswith((".", "-"))
    assert name.isascii() and name.isprintable() and len(name) <= 100
    assert all(ch.isalnum() or ch in "._-" for ch in name), name
    assert inside(tmp_path / "tasks", tmp_path / "tasks" / f"{name}.json")
    (tmp_path / f"{name}.json").write_text("{}")  # the file system takes it
    assert [p.name for p in tmp_path.iterdir()] == [f"{name}.json"]


def test_names_are_unique_even_ignoring_case():
    ids = HOSTILE_IDS + ["00576224", "007bbfb7", "a/", "a_", "a?", "\udc00", "\ud801"]
    ids += [task_file_name(i) for i in ids]  # an id spelled like another id's safe name
    ids = list(dict.fromkeys(ids))
    names = [task_file_name(i).lower() for i in ids]
    assert len(set(names)) == len(ids)


def test_names_of_hostile_ids_are_readable_and_hashed():
    name = task_file_name("../../x")
    digest = hashlib.sha256(b"../../x").hexdigest()[:16]
    assert name == f"x.{digest}"
    assert task_file_name("\ud800").startswith("task.")
    assert task_file_name("a" * 300).startswith("a" * 48 + ".")
    with pytest.raises(TypeError):
        task_file_name(5)  # type: ignore[arg-type]


def test_inside_and_same_file(tmp_path):
    (tmp_path / "w").mkdir()
    assert inside(tmp_path, tmp_path / "w" / "x")
    assert not inside(tmp_path / "w", tmp_path / "w" / ".." / "x")
    assert not inside(tmp_path / "w", "/etc/passwd")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "outside")
    assert not inside(tmp_path / "w", link)
    f = tmp_path / "f.json"
    f.write_text("{}")
    os.link(f, tmp_path / "hard.json")
    assert same_file(f, tmp_path / "hard.json") and same_file(f, tmp_path / "w" / ".." / "f.json")
    assert not same_file(f, tmp_path / "g.json")


# --- outputs that would overwrite inputs ------------------------------------------------------

def test_check_run_paths(tmp_path):
    ch, model, work = tmp_path / "ch.json", tmp_path / "model", tmp_path / "work"
    ch.write_text("{}")
    model.mkdir()
    check_run_paths(ch, model, tmp_path / "sub.json", work)  # fine
    check_run_paths(ch, None, tmp_path / "sub.json", work)
    check_run_paths(work / "ch.json", model, work / "sub.json", work)  # inputs in the workdir: fine
    bad = [(ch, model, ch, work, "--out"),
           (ch, model, tmp_path / "x" / ".." / "ch.json", work, "--out"),
           (ch, model, model / "config.json", work, "--out"),
           (work / "config.json", model, tmp_path / "s.json", work, "--challenges"),
           (work / "tasks" / "t.json", model, tmp_path / "s.json", work, "--challenges"),
           (ch, model, work / "run.json", work, "--out"),
           (ch, model, work / "adapters" / "s.json", work, "--out"),
           (ch, model, tmp_path / "s.json", model, "--model"),
           (ch, work / "adapters" / "m", tmp_path / "s.json", work, "--model")]
    for c, m, o, w, field in bad:
        with pytest.raises(InputError) as info:
            check_run_paths(c, m, o, w)
        assert info.value.field == field, (c, m, o, w)
    scratch = tmp_path / "scratch"
    check_run_paths(ch, model, tmp_path / "s.json", work, scratch)
    with pytest.raises(InputError, match="--model"):
        check_run_paths(ch, scratch / "adapters" / "m", tmp_path / "s.json", work, scratch)


def test_check_finetune_paths(tmp_path):
    check_finetune_paths(tmp_path / "base", tmp_path / "out")
    check_finetune_paths(tmp_path / "out" / "base", tmp_path / "out")
    for model in (tmp_path / "out" / "model", tmp_path / "out" / "checkpoints" / "step-1"):
        with pytest.raises(InputError, match="--model"):
            check_finetune_paths(model, tmp_path / "out")


def test_run_refuses_out_equal_to_challenges(tmp_path, capsys, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("the run started")

    monkeypatch.setattr("submission.runtime.run.run", must_not_run)
    ch = tmp_path / "ch.json"
    text = json.dumps(tasks_to_challenges({"t1": random_task("t1", 0)}))
    ch.write_text(text)
    os.link(ch, tmp_path / "hard.json")
    (tmp_path / "d").mkdir()
    for out in (ch, tmp_path / "d" / ".." / "ch.json", tmp_path / "hard.json"):
        code = cli.main(["run", "--challenges", str(ch), "--model", str(tmp_path / "m"),
                         "--out", str(out), "--workdir", str(tmp_path / "w")])
        _, err = capsys.readouterr()
        assert code == 2
        _one_error_line(err, "--out", str(out))
    code = cli.main(["run", "--challenges", str(ch), "--model", str(tmp_path / "m"),
                     "--out", str(tmp_path / "w" / "run.json"), "--workdir", str(tmp_path / "w")])
    assert code == 2
    _one_error_line(capsys.readouterr().err, "--out")
    assert ch.read_text() == text and not (tmp_path / "w").exists()


# --- deeply nested JSON, huge integers ---------------------------------------------------------

@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    depth = 100_000
    files = {
        "deep": '{"t1": ' + "[" * depth + "]" * depth + "}",
        "deep_obj": '{"a": ' + '{"a": ' * depth + "1" + "}" * depth + "}",
        "bigint": '{"t1": [[[' + "7" * 5000 + "]]]}",
        "bigint_top": "9" * 5000,
    }
    paths = {}
    for name, text in files.items():
        paths[name] = d / f"{name}.json"
        paths[name].write_text(text)
    ok = d / "ok_challenges.json"
    ok.write_text(json.dumps(tasks_to_challenges({"t1": random_task("t1", 0)})))
    paths["ok"] = ok
    sub = d / "ok_submission.json"
    sub.write_text(json.dumps({"t1": [{"attempt_1": [[0]], "attempt_2": [[0]]}]}))
    paths["sub"] = sub
    sol = d / "ok_solutions.json"
    sol.write_text(json.dumps({"t1": [[[0]]]}))
    paths["sol"] = sol
    paths["model"] = fake_model(d / "model")  # passes the model checks, so the JSON is the error
    return d, paths


@pytest.mark.parametrize("bad", ["deep", "deep_obj", "bigint", "bigint_top"])
def test_hostile_json_is_a_clean_error_everywhere(hostile_files, bad):
    d, p = hostile_files
    f = p[bad]
    commands = [
        ["validate", "--submission", f, "--challenges", p["ok"]],
        ["validate", "--submission", p["sub"], "--challenges", f],
        ["score", "--submission", f, "--solutions", p["sol"]],
        ["score", "--submission", p["sub"], "--solutions", f],
        ["run", "--challenges", f, "--model", p["model"], "--out", d / "o.json",
         "--workdir", d / "w"],
        ["run", "--challenges", p["ok"], "--model", p["model"], "--out", d / "o.json",
         "--workdir", d / "w", "--config", f],
    ]
    for argv in commands:
        proc = _subprocess(*argv, cwd=d)
        assert proc.returncode == 2, (argv, proc.stderr)
        _one_error_line(proc.stderr, str(f))
    assert not (d / "o.json").exists()


def test_deep_toml_config_is_a_config_error(tmp_path, capsys):
    cfg = tmp_path / "deep.toml"
    cfg.write_text("[ttt]\nr = " + "[" * 50_000 + "]" * 50_000 + "\n")
    code = cli.main(["run", "--challenges", str(tmp_path / "c.json"), "--model", str(tmp_path),
                     "--out", str(tmp_path / "o.json"), "--workdir", str(tmp_path / "w"),
                     "--config", str(cfg)])
    assert code == 2
    _one_error_line(capsys.readouterr().err, str(cfg), "nested too deeply")


def test_moderately_deep_cell_names_the_cell_briefly(tmp_path, capsys):
    ch = tmp_path / "c.json"
    cell = "[" * 500 + "]" * 500
    ch.write_text('{"t1": {"train": [{"input": [[1]], "output": [[1]]}], '
                  '"test": [{"input": [[1, ' + cell + "]]}]}}")
    sub = tmp_path / "s.json"
    sub.write_text("{}")
    code = cli.main(["validate", "--submission", str(sub), "--challenges", str(ch)])
    assert code == 2
    line = capsys.readouterr().err.strip()
    _one_error_line(line, str(ch), "t1", "test[0].input", "row 0 col 1")
    assert len(line) < 400


@pytest.mark.parametrize("item", [
    "budget.time_budget_s=inf", "budget.time_budget_s=1e309", "budget.time_budget_s=nan",
    "budget.prior_train_tokens_per_s=inf", "ttt.lora.dropout=nan", "selection.poe_offset=-inf",
    "sampling.temperature=inf", "ttt.seed=-1", "finetune.seed=-5", "sampling.seed=-1",
    "sampling.seed=4294967296", "ttt.lora.r=513", "ttt.lora.target_modules=", "ttt.lora.target_modules=q_proj,q_proj",
    "ttt.lora.target_modules=q proj", "ttt.lora.target_modules=../x", "ttt.lora.target_modules=lm_head",
    "finetune.lora.target_modules=embed_tokens", "ttt.lora.r=" + "1" * 5000])
def test_bad_config_values_exit_2_before_anything_runs(tmp_path, capsys, item):
    code = cli.main(["run", "--challenges", str(tmp_path / "c.json"), "--model", str(tmp_path),
                     "--out", str(tmp_path / "o.json"), "--workdir", str(tmp_path / "w"),
                     "--set", item])
    assert code == 2
    err = capsys.readouterr().err
    _one_error_line(err, item.split("=")[0])
    assert len(err) < 500 and not (tmp_path / "w").exists()


def test_time_budget_flag_inf_is_a_config_error(tmp_path, capsys):
    code = cli.main(["run", "--challenges", str(tmp_path / "c.json"), "--model", str(tmp_path),
                     "--out", str(tmp_path / "o.json"), "--workdir", str(tmp_path / "w"),
                     "--time-budget", "1e309"])
    assert code == 2
    _one_error_line(capsys.readouterr().err, "time_budget_s", "finite")


# --- per-task records ------------------------------------------------------------------------

def good_record(n_test: int = 1) -> dict:
    return {"timing": {"ttt_s": 1.5, "sample_s": 0.5, "select_s": 0.1}, "fallbacks": {"x": 1},
            "plan": {"ttt_s": 10.0}, "ttt": {"seconds": 1.0, "tokens": 100},
            "ttt_data": {"samples": 8}, "views": 4,
            "attempts": [[[[1, 2], [3, 4]], [[0]]] for _ in range(n_test)],
            "tests": [{"test_index": i, "samples": 4, "unparsed": 0,
                       "candidates": [{"grid": [[1]], "count": 2}],
                       "attempts_by_policy": {"vote": [[[1]]]}} for i in range(n_test)],
            "config": {"model": {}}}


def test_valid_record_accepts_what_the_pipeline_writes():
    assert valid_record(good_record(), 1)
    assert valid_record(good_record(3), 3)
    assert valid_record({"attempts": [[], [[[5]]]]}, 2)  # fewer than two attempts is allowed
    rec = good_record()
    rec["ttt"] = None  # a task whose TTT failed
    assert valid_record(rec, 1)


def _broken(**changes) -> dict:
    rec = good_record(2)
    for k, v in changes.items():
        if v is ...:
            del rec[k]
        else:
            rec[k] = v
    return rec


@pytest.mark.parametrize("rec", [
    [], None, 5, "attempts", {}, {"attempts": 5}, {"attempts": None}, {"attempts": "ab"},
    _broken(attempts=...), _broken(attempts=[]), _broken(attempts=[[[[1]]]]),
    _broken(attempts=[[[[1]]]] * 3), _broken(attempts=[5, 6]), _broken(attempts=[[5], [6]]),
    _broken(attempts=[[[[1]]], [[[10]]]]), _broken(attempts=[[[[1]]], [[[1, 2], [3]]]]),
    _broken(attempts=[[[[1]]], [[["1"]]]]), _broken(attempts=[[[[1]]], [[[True]]]]),
    _broken(attempts=[[[[1]]], [[[1.0]]]]), _broken(attempts=[[[[1]]], [[[1]]] * 3]),
    _broken(attempts=[[[[1]]], {"attempt_1": [[1]]}]),
    _broken(timing=[]), _broken(timing={"ttt_s": "x"}), _broken(fallbacks=[1]),
    _broken(views="4"), _broken(views=-1), _broken(tests={}), _broken(tests=[5]),
    _broken(tests=[{"test_index": 7}]), _broken(tests=[{"test_index": "0"}]),
    _broken(tests=[{"test_index": 0, "candidates": 5}]),
    _broken(tests=[{"test_index": 0, "attempts_by_policy": {"vote": [[[11]]]}}]),
    _broken(ttt=[1]), _broken(plan="x"), _broken(extra=float("nan")),
])
def test_valid_record_rejects_corrupt_records(rec):
    assert not valid_record(rec, 2)


def test_valid_record_needs_a_sane_test_count():
    assert not valid_record(good_record(), 0)
    assert not valid_record(good_record(), True)  # type: ignore[arg-type]


def test_read_record(tmp_path):
    path = tmp_path / "t.json"
    assert read_record(path, 1) is None  # missing
    path.write_text(json.dumps(good_record()))
    assert read_record(path, 1) == good_record()
    assert read_record(path, 2) is None  # wrong test count
    for text in ("[]", '{"attempts": 5}', "not json", "[" * 100_000 + "]" * 100_000,
                 '{"attempts": [[[[' + "1" * 5000 + "]]]]}", '{"attempts": [[[[NaN]]]]}'):
        path.write_text(text)
        assert read_record(path, 1) is None, text[:40]
    path.write_bytes(b"\xff\xfe{}")
    assert read_record(path, 1) is None
    assert read_record(tmp_path, 1) is None  # a directory


# --- model files -----------------------------------------------------------------------------

def test_check_safetensors_matches_the_library(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "lib.safetensors"
    save_file({"x": np.zeros((3, 5), np.float32), "y": np.ones(7, np.int64),
               "z": np.zeros((0, 2), np.float32)}, str(path))
    check_safetensors(path)
    check_model_weights(fake_model(tmp_path / "m"))


def _corruptions(path: Path) -> dict[str, bytes]:
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])

    def with_header(h: dict) -> bytes:
        raw = json.dumps(h).encode()
        return struct.pack("<Q", len(raw)) + raw + data[8 + n:]

    gap = dict(header, **{"a.weight": dict(header["a.weight"], data_offsets=[4, 52])})
    wrong_size = dict(header, **{"b.bias": dict(header["b.bias"], shape=[6])})
    return {"truncated": data[:-1], "half": data[:len(data) // 2], "trailing": data + b"\0",
            "empty": b"", "short": data[:5], "huge header": struct.pack("<Q", 2**40) + data[8:],
            "header past end": struct.pack("<Q", len(data)) + data[8:],
            "not json": struct.pack("<Q", 4) + b"\xff\xfe{]" + data[12:],
            "not object": with_header([1]), "gap": with_header(gap),
            "wrong size": with_header(wrong_size),
            "bad offsets": with_header(dict(header, c={"dtype": "U8", "shape": [0],
                                                       "data_offsets": [5, 2]})),
            "bad shape": with_header(dict(header, c={"dtype": "U8", "shape": [-1],
                                                     "data_offsets": [0, 0]})),
            "entry not object": with_header(dict(header, c=3))}


def test_corrupt_safetensors_name_the_file(tmp_path):
    model = fake_model(tmp_path / "m")
    weights = model / "model.safetensors"
    good = weights.read_bytes()
    for what, data in _corruptions(weights).items():
        weights.write_bytes(data)
        with pytest.raises(InputError) as info:
            check_model_weights(model)
        assert info.value.file == str(weights), what
        assert "model.safetensors" in str(info.value), what
    weights.write_bytes(good)
    check_model_weights(model)


def test_model_without_weights_or_with_a_broken_index(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with pytest.raises(InputError, match="no weight files"):
        check_model_weights(model)
    write_safetensors(model / "model-00001-of-00002.safetensors", {"a": ("F32", [2])})
    index = model / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors",
                                                "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(InputError, match="model-00002-of-00002") as info:
        check_model_weights(model)
    assert info.value.file == str(index)
    index.write_text(json.dumps({"weight_map": {"a": "../../etc/passwd"}}))
    with pytest.raises(InputError):
        check_model_weights(model)
    index.write_text(json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}}))
    check_model_weights(model)


def test_model_identity(tmp_path):
    a = fake_model(tmp_path / "a")
    ident = model_identity(a)
    assert ident == {"path": str(a.resolve()), "fingerprint": ident["fingerprint"]}
    assert model_identity(tmp_path / "x" / ".." / "a") == ident  # resolved path, stable
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)
    same = model_identity(copy)
    assert same["fingerprint"] == ident["fingerprint"] and same["path"] != ident["path"]
    other_weights = fake_model(tmp_path / "b", seed=2)  # same names and sizes, other values
    other_config = fake_model(tmp_path / "c", config='{"model_type": "llama"}')
    bigger = fake_model(tmp_path / "d")
    write_safetensors(bigger / "model.safetensors", {"a.weight": ("F32", [4, 4])})
    renamed = fake_model(tmp_path / "e")
    (renamed / "model.safetensors").rename(renamed / "other.safetensors")
    tokenizer = fake_model(tmp_path / "f")
    (tokenizer / "tokenizer.json").write_text("{}")
    prints = {model_identity(m)["fingerprint"]
              for m in (a, other_weights, other_config, bigger, renamed, tokenizer)}
    assert len(prints) == 6


# --- end to end through the CLI (slow: they load the tiny model) -------------------------------

def _snapshot(root: Path, skip: tuple[Path, ...]) -> dict[str, bytes | None]:
    """Every path under root (files with their bytes), leaving out the `skip` trees."""
    out: dict[str, bytes | None] = {}
    for p in sorted(root.rglob("*")):
        if any(p == s or s in p.parents for s in skip):
            continue
        out[str(p.relative_to(root))] = p.read_bytes() if p.is_file() else None
    return out


def _run_json(workdir: Path) -> dict:
    return json.loads((workdir / "run.json").read_text())


@pytest.mark.slow
def test_hostile_task_ids_stay_inside_the_workdir(tmp_path, tiny_model):
    """Needs the run to name records, adapters and fault markers by `task_file_name`."""
    top = tmp_path / "a" / "b"
    victim = top / "x"  # where "../../x" would land from top/work/adapters
    victim.mkdir(parents=True)
    (victim / "precious.txt").write_text("keep me")
    (top / "x.json").write_text("keep me too")  # where "../../x" would land from top/work/tasks
    absolute = str(tmp_path / "abs" / "victim")
    Path(absolute).mkdir(parents=True)
    (Path(absolute) / "precious.txt").write_text("keep me")
    ids = ["../../x", absolute, "..", "a\nb", "\ud800", "ok000001"]
    ch = write_challenges(tmp_path / "challenges.json", ids)
    work, out = top / "work", tmp_path / "submission.json"
    before = _snapshot(tmp_path, (work, out))
    proc = run_cli(tmp_path, ch, tiny_model, workdir=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert _snapshot(tmp_path, (work, out)) == before  # nothing written or deleted outside
    sub = json.loads(out.read_text())
    assert validate_submission(sub, {i: 1 for i in ids}) == []
    records = sorted(p.name for p in (work / "tasks").iterdir())
    assert records == sorted(f"{task_file_name(i)}.json" for i in ids)
    for p in work.rglob("*"):
        assert inside(work, p) and p.name.isascii() and p.name.isprintable(), p
    report = _run_json(work)
    assert report["resumed"] == 0 and not report["faults"], report["faults"]
    proc = run_cli(tmp_path, ch, tiny_model, workdir=work)  # a rerun finds every record
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _run_json(work)["resumed"] == len(ids)
    assert _snapshot(tmp_path, (work, out)) == before


@pytest.mark.slow
def test_rerun_with_another_model_redoes_answers_and_adapters(tmp_path, tiny_model):
    """Needs `model_identity` in the record identity and in the adapter's ttt_done identity."""
    from submission.model.tiny import make_tiny_model

    other = make_tiny_model(tmp_path / "other", "qwen-chat", seed=1)
    ch = write_challenges(tmp_path / "challenges.json", ["t0000001"])
    work = tmp_path / "work"
    proc = run_cli(tmp_path, ch, tiny_model)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _run_json(work)["resumed"] == 0
    for rec in (work / "tasks").iterdir():
        rec.unlink()  # only the finished adapter is left from the first model
    proc = run_cli(tmp_path, ch, other)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = _run_json(work)
    assert report["resumed"] == 0
    assert report["fallbacks"].get("ttt_adapter_reused", 0) == 0, report["fallbacks"]
    proc = run_cli(tmp_path, ch, other)  # the same model again: everything is reused
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _run_json(work)["resumed"] == 1
    proc = run_cli(tmp_path, ch, tiny_model)  # back to the first model: redone
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _run_json(work)["resumed"] == 0


@pytest.mark.slow
def test_corrupt_task_records_are_redone(tmp_path, tiny_model):
    """Needs run.py to load records through `read_record` (or `valid_record`)."""
    ch = write_challenges(tmp_path / "challenges.json", ["t0000001"])
    work = tmp_path / "work"
    proc = run_cli(tmp_path, ch, tiny_model)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = list((work / "tasks").iterdir())
    good = json.loads(path.read_text())
    assert valid_record(good, 1)
    corrupt = ["[]", json.dumps(dict(good, attempts=5)),  # identity intact, attempts broken
               json.dumps(dict(good, attempts=[[[["x"]]]])),
               json.dumps(dict(good, attempts=[[[[1]]], [[[1]]]])),  # one test input, two lists
               "[" * 100_000 + "]" * 100_000]
    for text in corrupt:
        path.write_text(text)
        proc = run_cli(tmp_path, ch, tiny_model)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, (text[:50], proc.stderr[-3000:])
        assert _run_json(work)["resumed"] == 0, text[:50]
        assert valid_record(json.loads(path.read_text()), 1)
        sub = json.loads((tmp_path / "submission.json").read_text())
        assert validate_submission(sub, {"t0000001": 1}) == []


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "1"])
def test_truncated_model_weights_exit_2_naming_the_file(tmp_path, tiny_model, workers):
    """Needs `check_model_weights` in engine.check_model_dir (before any worker starts)."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:len(data) - 100])
    ch = write_challenges(tmp_path / "challenges.json", ["t0000001"])
    proc = run_cli(tmp_path, ch, model, "--set", f"budget.workers={workers}", timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    _one_error_line(proc.stderr, str(weights))
