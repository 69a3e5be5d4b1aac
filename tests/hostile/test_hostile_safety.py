"""Hostile use of the CLI that once lost data or hung: outputs onto inputs or onto each other,
directories and FIFOs where files belong, two runs on one workdir, Ctrl-C, a killed supervisor,
ambiguous or empty Kaggle inputs, files of the wrong kind, hostile task ids in messages, output
file modes, duplicate config keys and vLLM's temp files. Every refusal is exit 2 with one line
naming the arguments, before anything is written."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from submission import cli
from submission.errors import InputError, printable
from submission.runtime.files import write_json_atomic, write_text_atomic
from submission.runtime.lock import LOCK_NAME, workdir_lock
from submission.arc.tasks import tasks_to_challenges
from submission.runtime.vllm_tmp import PREFIX, engine_tmpdir, sweep
from tests.helpers import random_task, write_challenges
from tests.helpers import FAST, fake_model, run_cli
from tests.helpers import FAST_RATES as RATES
from tests.helpers import one_error_line as _one_error_line

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def nothing_runs(monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("the command started its work")

    for name in ("submission.runtime.run.run", "submission.tools.dry_run.dry_run", "submission.arc.tasks.export_kaggle",
                 "submission.model.tiny.make_tiny_model", "submission.model.vocab.shrink_vocab",
                 "submission.finetune.run.finetune", "submission.tools.gpu_check.gpu_check"):
        monkeypatch.setattr(name, must_not_run)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- outputs onto inputs or onto each other ------------------------------------------------------

def _collisions(t: Path) -> list[tuple[list[str], tuple[str, ...]]]:
    """(argv, words the error line must hold) for each way an output lands on an input or another
    output; every path named exists beforehand, so a write would show."""
    ch, cfg, cal, work = t / "ch.json", t / "cfg.json", t / "cal.json", t / "w"
    model = t / "model"
    run = ["run", "--challenges", str(ch), "--model", str(model), "--workdir", str(work)]
    return [
        (run + ["--out", str(work / "report.html")], ("--out", "report.html in --workdir")),
        (run + ["--out", str(cfg), "--config", str(cfg)], ("--out", "--config")),
        (run + ["--out", str(cal), "--calibration", str(cal)], ("--out", "--calibration")),
        (run + ["--out", str(t / "w" / ".." / "cfg.json"), "--config", str(cfg)], ("--out", "--config")),
        (run + ["--out", str(t / "hard.json"), "--config", str(cfg)], ("--out", "--config")),
        (run + ["--out", str(t / "link.json"), "--calibration", str(cal)], ("--out", "--calibration")),
        (["run", "--challenges", str(ch), "--model", str(model), "--workdir", str(t),
          "--out", str(t / "sub.json"), "--config", str(t / "run.json")],
         ("run.json in --workdir", "--config")),
        (["dry-run", "--workdir", str(t), "--config", str(t / "score.json")],
         ("score.json in --workdir", "--config")),
        (["shrink-vocab", "--model", str(model), "--out", str(model)], ("--out", "--model")),
        (["shrink-vocab", "--model", str(model), "--out", str(model / "small")], ("--out", "--model")),
        (["finetune", "--model", str(model), "--out", str(work), "--config",
          str(work / "finetune.json")], ("finetune.json in --out", "--config")),
        (["finetune", "--model", str(model), "--out", str(t)], ("model/ in --out", "--model")),
        (["gpu-check", "--model", str(model), "--out", str(work), "--config",
          str(work / "calibration.json")], ("calibration.json in --out", "--config")),
        (["export", "--dataset", "arc-agi-1", "--split", "training", "--out", str(ch)],
         ("--out", "not a directory")),
        (["tiny-model", str(ch)], ("OUT", "not a directory")),
    ]


def test_every_command_refuses_outputs_onto_inputs(tmp_path, capsys, nothing_runs):
    t = tmp_path
    fake_model(t / "model")
    (t / "model" / "small").mkdir()
    (t / "w").mkdir()
    for name in ("ch.json", "cfg.json", "cal.json", "run.json", "score.json", "w/finetune.json",
                 "w/calibration.json"):
        (t / name).write_text("{}")
    write_challenges(t / "ch.json", ["t1"])
    (t / "cal.json").write_text(json.dumps(RATES))
    os.link(t / "cfg.json", t / "hard.json")
    (t / "link.json").symlink_to(t / "cal.json")
    (t / "w" / "report.html").write_text("<p>old</p>")
    before = _files(t)
    for argv, words in _collisions(t):
        code = cli.main(argv)
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        _one_error_line(err, *words)
        assert "it would be overwritten" in err or "not a directory" in err, err
        assert _files(t) == before, argv  # nothing written, nothing removed


def test_a_directory_as_out_is_refused_naming_the_argument(tmp_path, capsys, nothing_runs):
    ch = write_challenges(tmp_path / "ch.json", ["t1"])
    fake_model(tmp_path / "model")
    (tmp_path / "outdir").mkdir()
    code = cli.main(["run", "--challenges", str(ch), "--model", str(tmp_path / "model"),
                     "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "outdir")])
    assert code == 2
    err = capsys.readouterr().err
    _one_error_line(err, "--out is a directory", str(tmp_path / "outdir"))
    assert ".tmp" not in err and not (tmp_path / "w").exists()


def _report_workdir(t: Path) -> tuple[Path, Path, Path]:
    """A finished run's workdir (run.json names the challenges and the submission) as `run` writes it."""
    ch = write_challenges(t / "ch.json", ["t0000001"])
    work, sub = t / "w", t / "submission.json"
    record = {"task_id": "t0000001", "attempts": [[[[0]], [[0]]]], "tests": [], "fallbacks": {},
              "timing": {}}
    write_json_atomic(work / "tasks" / "t0000001.json", record)
    write_json_atomic(work / "config.json", {})
    write_json_atomic(work / "run.json", {"challenges": str(ch), "submission": str(sub), "tasks": 1,
                                          "per_task": {"t0000001": record}, "faults": [],
                                          "fallbacks": {}})
    write_json_atomic(sub, {"t0000001": [{"attempt_1": [[0]], "attempt_2": [[0]]}]})
    return work, ch, sub


def test_report_refuses_out_onto_what_it_reads_or_the_run_wrote(tmp_path, capsys):
    work, ch, sub = _report_workdir(tmp_path)
    sol = tmp_path / "sol.json"
    sol.write_text(json.dumps({"t0000001": [[[0]]]}))
    before = _files(tmp_path)
    cases = [(work / "run.json", "run.json in WORKDIR"), (work / "config.json", "config.json in"),
             (work / "tasks" / "t0000001.json", "tasks/ in WORKDIR"), (ch, "--challenges"),
             (sub, "the run's --out"), (work / "tasks", "--out is a directory")]
    for out, words in cases:
        code = cli.main(["report", str(work), "--out", str(out)])
        assert code == 2, out
        _one_error_line(capsys.readouterr().err, "--out", words)
    assert cli.main(["report", str(work), "--solutions", str(sol), "--out", str(sol)]) == 2
    _one_error_line(capsys.readouterr().err, "--out", "--solutions")
    assert _files(tmp_path) == before
    assert cli.main(["report", str(work)]) == 0  # the default page is fine
    assert (work / "report.html").is_file()


def test_kaggle_refuses_a_config_that_is_its_submission(tmp_path, capsys, nothing_runs):
    root = tmp_path / "in"
    mount = root / "competitions" / "arc-prize-2026-arc-agi-2"
    mount.mkdir(parents=True)
    write_challenges(mount / "arc-agi_test_challenges.json", ["t1"])
    fake_model(tmp_path / "model")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "submission.json").write_text('{"ttt": {}}')
    code = cli.main(["kaggle", "--input-root", str(root), "--working", str(tmp_path / "work"),
                     "--model", str(tmp_path / "model"), "--config",
                     str(tmp_path / "work" / "submission.json")])
    assert code == 2
    _one_error_line(capsys.readouterr().err, "--out", "--config")


# --- inputs that are not regular files --------------------------------------------------------

@pytest.fixture
def alarm():
    """Fails the test instead of hanging if a read blocks (a FIFO without a writer)."""
    def hung(*_):
        raise AssertionError("blocked reading a FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_a_fifo_as_an_input_is_refused(tmp_path, capsys, alarm):
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    ch = write_challenges(tmp_path / "ch.json", ["t1"])
    fake_model(tmp_path / "model")
    sub = tmp_path / "s.json"
    sub.write_text("{}")
    common = ["--model", str(tmp_path / "model"), "--out", str(tmp_path / "o.json"),
              "--workdir", str(tmp_path / "w")]
    cases = [["run", "--challenges", str(fifo), *common],
             ["run", "--challenges", str(ch), *common, "--config", str(fifo)],
             ["run", "--challenges", str(ch), *common, "--calibration", str(fifo)],
             ["validate", "--submission", str(fifo), "--challenges", str(ch)],
             ["score", "--submission", str(sub), "--solutions", str(fifo)],
             ["memory-plan", "--model", str(tmp_path / "model"), "--gpu-memory-gib", "20",
              "--config", str(fifo)],
             ["run", "--challenges", str(ch), "--model", str(fifo), "--out", str(tmp_path / "o.json"),
              "--workdir", str(tmp_path / "w")]]
    for argv in cases:
        assert cli.main(argv) == 2, argv
        _one_error_line(capsys.readouterr().err, str(fifo), "not a")
    assert not (tmp_path / "w").exists() and not (tmp_path / "o.json").exists()


def test_duplicate_keys_in_a_json_config_are_refused(tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text('{"ttt": {"r": 8, "r": 64}}')
    code = cli.main(["run", "--challenges", str(tmp_path / "c.json"), "--model", str(tmp_path),
                     "--out", str(tmp_path / "o.json"), "--workdir", str(tmp_path / "w"),
                     "--config", str(cfg)])
    assert code == 2
    _one_error_line(capsys.readouterr().err, str(cfg), "duplicate key 'r'")
    assert not (tmp_path / "w").exists()


# --- files of the wrong kind, hostile ids, deep JSON --------------------------------------------

def test_a_solutions_file_as_challenges_is_exit_2(tmp_path, capsys):
    sol = tmp_path / "arc-agi_evaluation_solutions.json"
    sol.write_text(json.dumps({"t1": [[[1, 2]]], "t2": [[[3]]]}))
    fake_model(tmp_path / "model")
    code = cli.main(["run", "--challenges", str(sol), "--model", str(tmp_path / "model"),
                     "--out", str(tmp_path / "o.json"), "--workdir", str(tmp_path / "w"),
                     "--set", "budget.workers=0"])
    assert code == 2
    _one_error_line(capsys.readouterr().err, str(sol), "none of its 2 task(s) loads", "task t1")
    assert not (tmp_path / "o.json").exists() and not (tmp_path / "w" / "config.json").exists()


def test_the_competition_rerun_still_writes_placeholders_for_unloadable_tasks(tmp_path):
    from submission.config import Config
    from submission.runtime.run import Run

    sol = tmp_path / "ch.json"
    sol.write_text(json.dumps({"t1": [[[1]]]}))
    with pytest.raises(InputError, match="none of its 1 task"):
        Run(sol, tmp_path / "o.json", tmp_path / "w", Config())
    state = Run(sol, tmp_path / "o.json", tmp_path / "w", Config(), strict_load=False)
    assert state.fallbacks["bad_task"] == 1
    assert json.loads((tmp_path / "o.json").read_text()) == {
        "t1": [{"attempt_1": [[0]], "attempt_2": [[0]]}]}


HOSTILE = "evil\nerror: fake line\x1b[2J\r\x07\ud800"


def test_hostile_task_ids_are_printed_escaped_on_one_line(tmp_path, capsys):
    ch = tmp_path / "ch.json"
    good = tasks_to_challenges({"ok": random_task("ok", 0)})["ok"]
    ch.write_text(json.dumps({HOSTILE: {"train": [], "test": [{"input": [[1]]}]}, "ok": good}))
    sub = tmp_path / "s.json"
    sub.write_text(json.dumps({"ok": [{"attempt_1": [[0]], "attempt_2": [[0]]}]}))
    assert cli.main(["validate", "--submission", str(sub), "--challenges", str(ch)]) == 2
    err = capsys.readouterr().err
    _one_error_line(err, "evil\\nerror: fake line\\x1b[2J\\r\\x07\\ud800")
    ch.write_text(json.dumps({HOSTILE: good, "ok": good}))
    assert cli.main(["validate", "--submission", str(sub), "--challenges", str(ch)]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\r" not in err
    (problem,) = [line for line in err.splitlines() if "evil" in line]
    assert "evil\\nerror: fake line" in problem
    assert cli.main(["score", "--submission", str(sub), "--solutions",
                     str(_solutions(tmp_path, good))]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "evil\\n" in err and "\x1b" not in err
    assert printable("é名前 ok") == "é名前 ok"  # readable text stays as it is


def _solutions(t: Path, task: dict) -> Path:
    p = t / "sol.json"
    p.write_text(json.dumps({HOSTILE: [[[0]]], "ok": [[[0]]]}))
    return p


def test_report_names_a_deeply_nested_challenges_file(tmp_path, capsys):
    work, _, _ = _report_workdir(tmp_path)
    deep = tmp_path / "deep.json"
    deep.write_text('{"t1": ' + "[" * 100_000 + "]" * 100_000 + "}")
    code = cli.main(["report", str(work), "--challenges", str(deep)])
    assert code == 2
    _one_error_line(capsys.readouterr().err, str(deep), "nested too deeply")
    assert not (work / "report.html").exists()


# --- output file modes ------------------------------------------------------------------------

@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_output_files_honour_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        write_json_atomic(tmp_path / "a.json", {"x": 1})
        write_text_atomic(tmp_path / "b.html", "<p>")
        (tmp_path / "r").mkdir()
        work, _, _ = _report_workdir(tmp_path / "r")
        assert cli.main(["report", str(work), "--out", str(tmp_path / "c.html")]) == 0
    finally:
        os.umask(old)
    for name in ("a.json", "b.html", "c.html"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask, name


def test_every_atomic_file_write_goes_through_files_py():
    """One implementation (files.py: fsync, umask); no module makes its own temp file."""
    for path in (ROOT / "submission").rglob("*.py"):
        if path.name == "files.py":
            continue
        text = path.read_text()
        assert not re.search(r"mkstemp|NamedTemporaryFile", text), path


# --- one run per workdir ----------------------------------------------------------------------

HOLD = """
import sys, time
sys.path.insert(0, {root!r})
from submission.runtime.lock import workdir_lock
with workdir_lock({work!r}):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_run_on_a_locked_workdir_exits_2_naming_the_holder(tmp_path, capsys):
    work = tmp_path / "w"
    holder = subprocess.Popen([sys.executable, "-c", HOLD.format(root=str(ROOT), work=str(work))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        ch = write_challenges(tmp_path / "ch.json", ["t1"])
        fake_model(tmp_path / "model")
        code = cli.main(["run", "--challenges", str(ch), "--model", str(tmp_path / "model"),
                         "--out", str(tmp_path / "o.json"), "--workdir", str(work)])
        assert code == 2
        _one_error_line(capsys.readouterr().err, "--workdir", "in use by another run",
                        f"pid {holder.pid} on host ", "started 20")
        assert not (tmp_path / "o.json").exists() and not (work / "config.json").exists()
    finally:
        holder.kill()
        holder.wait()
    assert (work / LOCK_NAME).exists()  # a killed holder leaves its lock file ...
    with workdir_lock(work):  # ... which the next run takes over
        assert json.loads((work / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (work / LOCK_NAME).exists()  # removed at the end


# --- Kaggle: a smoke run that ran nothing -----------------------------------------------------

def test_a_smoke_run_on_an_empty_test_file_fails(tmp_path, capsys):
    root = tmp_path / "in"
    mount = root / "competitions" / "arc-prize-2026-arc-agi-2"
    mount.mkdir(parents=True)
    (mount / "arc-agi_test_challenges.json").write_text("{}")
    fake_model(tmp_path / "model")
    code = cli.main(["kaggle", "--input-root", str(root), "--working", str(tmp_path / "work"),
                     "--model", str(tmp_path / "model"), "--smoke", "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "no stage ran: 0 task(s)" in err and "every stage worked" not in err


# --- vLLM's temp files --------------------------------------------------------------------------

def test_vllm_rendezvous_file_goes_to_the_engine_tmpdir(tmp_path, monkeypatch):
    """The real vLLM function that names the file (vllm/utils/network_utils.py:153)."""
    from vllm.utils.network_utils import get_file_store_init_method

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(RuntimeError):
        with engine_tmpdir() as d:
            url = get_file_store_init_method()
            assert url.startswith(f"file://{d}/vllm_dist_")
            Path(url[len("file://"):]).write_text("store")
            raise RuntimeError("the KV cache does not fit")  # a failed start
    assert list(tmp_path.iterdir()) == [] or all(p.name.startswith("torchinductor_")
                                                 for p in tmp_path.iterdir())
    assert tempfile.gettempdir() == str(tmp_path) and os.environ.get("TMPDIR") != str(d)


KILLED = """
import sys, tempfile, time
sys.path.insert(0, {root!r})
tempfile.tempdir = {base!r}
from submission.runtime.vllm_tmp import engine_tmpdir
with engine_tmpdir() as d:
    open(tempfile.gettempdir() + "/vllm_dist_0123", "w").write("store")
    print(d, flush=True)
    time.sleep(60)
"""


def test_temp_files_of_a_killed_engine_are_swept(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", KILLED.format(root=str(ROOT), base=str(tmp_path))],
                            stdout=subprocess.PIPE, text=True)
    d = Path(proc.stdout.readline().strip())
    assert d.parent == tmp_path and d.name.startswith(f"{PREFIX}{proc.pid}-")
    assert (d / "vllm_dist_0123").exists()
    assert sweep(tmp_path) == []  # its process is alive: kept
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    assert (d / "vllm_dist_0123").exists()  # what a SIGTERM leaves ...
    assert sweep(tmp_path) == [d] and not d.exists()  # ... the next run removes


# --- end to end: Ctrl-C, a second run, a killed supervisor, vLLM's output and temp files ---------

def _cli(tmp: Path, ch: Path, model: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    """`run` (CPU-sized, as run_cli) started in its own session, so that a signal to its process
    group reaches it and its workers as Ctrl-C in a terminal would."""
    calibration = tmp.parent / f"{tmp.name}.calibration.json"
    calibration.write_text(json.dumps(RATES))
    argv = ["run", "--challenges", ch, "--model", model, "--out", tmp / "submission.json",
            "--workdir", tmp / "work", "--calibration", calibration, *FAST, *extra]
    return subprocess.Popen([sys.executable, "-m", "submission", *map(str, argv)], cwd=tmp,
                            env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _children(pid: int) -> list[int]:
    out = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat_file.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for(what, timeout: float, proc: subprocess.Popen | None = None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (value := what()):
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_ctrl_c_a_second_run_and_a_killed_supervisor(tmp_path, tiny_model):
    """One workdir, worker processes: a second run is refused while the first holds the lock;
    Ctrl-C (SIGINT to the process group) ends the first with exit 130, one line, run.json and a
    submission holding every finished task; a SIGKILLed supervisor leaves no worker behind."""
    from submission.arc.submit import validate_submission

    ids = [f"t{i:07d}" for i in range(30)]  # more than finish before the interrupt lands
    ch = write_challenges(tmp_path / "challenges.json", ids)
    work = tmp_path / "work"
    first = _cli(tmp_path, ch, tiny_model, "--set", "budget.workers=1")
    try:
        _wait_for(lambda: (work / LOCK_NAME).is_file() and (work / LOCK_NAME).read_text(), 120, first)
        second = run_cli(tmp_path, ch, tiny_model, "--set", "budget.workers=1", timeout=120)
        assert second.returncode == 2, second.stderr[-3000:]
        _one_error_line(second.stderr, "in use by another run", f"pid {first.pid} on host")
        workers = _wait_for(lambda: _children(first.pid), 120, first)
        _wait_for(lambda: list((work / "tasks").glob("*.json")), 600, first)
        os.killpg(first.pid, signal.SIGINT)
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert first.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(r"error: interrupted: \d+ of 30 task\(s\) finished, kept in .*", last), last
    _wait_for(lambda: not any(_alive(w) for w in workers), 10)
    report = json.loads((work / "run.json").read_text())
    sub = json.loads((tmp_path / "submission.json").read_text())
    assert report["interrupted"] is True and validate_submission(sub, {i: 1 for i in ids}) == []
    finished = {json.loads(p.read_text())["task_id"] for p in (work / "tasks").glob("*.json")}
    assert finished and set(report["per_task"]) >= finished
    for task_id in finished:
        rec = json.loads((work / "tasks" / f"{task_id}.json").read_text())
        for entry, grids in zip(sub[task_id], rec["attempts"], strict=True):
            assert [entry["attempt_1"], entry["attempt_2"]][:len(grids)] == grids[:2]

    assert not (work / LOCK_NAME).exists()
    (tmp_path / "third").mkdir()  # a fresh workdir: the first run's worker may have finished all
    third = _cli(tmp_path / "third", ch, tiny_model, "--set", "budget.workers=1")
    try:
        _wait_for(lambda: _children(third.pid), 120, third)
        time.sleep(3)  # the worker is loading or training now
        children = _children(third.pid)  # the worker (and multiprocessing's resource tracker)
        os.kill(third.pid, signal.SIGKILL)
        third.wait(timeout=30)
        gone = time.monotonic()
        _wait_for(lambda: not any(_alive(c) for c in children), 10)
        assert time.monotonic() - gone < 5
    finally:
        if third.poll() is None or any(_alive(w) for w in _children(third.pid)):
            os.killpg(third.pid, signal.SIGKILL)
        third.wait()
    with workdir_lock(tmp_path / "third" / "work"):  # the dead supervisor's lock is taken over
        pass


@pytest.mark.slow
def test_a_failed_vllm_start_keeps_stdout_json_and_leaves_no_temp_files(tmp_path, tiny_model):
    """vLLM logs to stderr (stdout is the run's JSON summary alone), and the vllm_dist_* file of
    a start that fails after the rendezvous (a KV cache that does not fit) is removed."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    ch = write_challenges(tmp_path / "challenges.json", ["t0000001"])
    proc = _cli(tmp_path, ch, tiny_model, "--set", "sampling.backend=vllm",
                env={"TMPDIR": str(tmp), "VLLM_CPU_KVCACHE_SPACE": "100000"})
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(out)  # nothing else on stdout
    assert summary["fallbacks"].get("vllm_start_failed") == 1, summary
    assert "kv cache" in json.loads((tmp_path / "work" / "run.json").read_text())[
        "backends"]["worker_info"]["0"]["vllm_start_error"].lower()
    assert "INFO" in err  # vLLM did log, to stderr
    left = [p.name for p in tmp.rglob("*") if p.name.startswith(("vllm_dist_", PREFIX))]
    assert left == [], left


@pytest.mark.slow
def test_ctrl_c_in_process_keeps_what_finished(tmp_path, tiny_model):
    """budget.workers=0: the interrupt lands in the pipeline itself."""
    from submission.arc.submit import validate_submission

    ids = [f"t{i:07d}" for i in range(30)]  # more than finish before the interrupt lands
    ch = write_challenges(tmp_path / "challenges.json", ids)
    work = tmp_path / "work"
    proc = _cli(tmp_path, ch, tiny_model)
    try:
        _wait_for(lambda: list((work / "tasks").glob("*.json")), 600, proc)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and out == "", err[-3000:]
    assert err.strip().splitlines()[-1].startswith("error: interrupted: ")
    report = json.loads((work / "run.json").read_text())
    finished = {json.loads(p.read_text())["task_id"] for p in (work / "tasks").glob("*.json")}
    assert report["interrupted"] is True and set(report["per_task"]) >= finished
    sub = json.loads((tmp_path / "submission.json").read_text())
    assert validate_submission(sub, {i: 1 for i in ids}) == []
    assert not (work / LOCK_NAME).exists()
