"""The engine end to end on CPU: peft TTT, vLLM multi-LoRA sampling, re-scoring, selection, run."""

import json

import pytest

from submission.arc.grids import as_grid, grid_to_list
from submission.answers.sampling import GenRequest
from submission.arc.submit import challenge_counts, validate_submission
from submission.arc.tasks import export_kaggle, load_challenges, load_dataset
from tests.helpers import LEARN, SMALL, zeros_task

pytestmark = pytest.mark.slow


def test_engine_uses_vllm_and_peft(engine):
    assert engine.info["sampler_backend"] == "vllm" and engine.info["trainer_backend"] == "peft"
    assert type(engine.sampler).__name__ == "VLLMSampler"


def test_multi_lora_batch_matches_peft(engine, adapters):
    reqs = [GenRequest(tuple(engine.fmt.encode_prompt(list(t.train), t.test_inputs[0])), a, 16)
            for t, a in adapters]
    reqs += reqs[::-1]  # interleaved adapters in one call
    got = engine.sampler.generate(reqs)
    want = engine.forward.generate(reqs)
    assert [g[0][0] for g in got] == [w[0][0] for w in want]
    for (g, w) in zip(got, want):
        assert g[0][1] == pytest.approx(w[0][1], abs=1e-3)
    outs = {tuple(g[0][0]) for g in got}
    assert len(outs) == 3, "three adapters should give three different answers"


def test_base_prompts_never_get_an_adapter(engine, adapters):
    (task, adapter), _ = adapters[1], None
    prompt = tuple(engine.fmt.encode_prompt(list(task.train), task.test_inputs[0]))
    base_alone = engine.sampler.generate([GenRequest(prompt, None, 12)])[0][0][0]
    mixed = engine.sampler.generate([GenRequest(prompt, adapter, 12), GenRequest(prompt, None, 12)])
    assert mixed[1][0][0] == base_alone
    assert base_alone == engine.forward.generate([GenRequest(prompt, None, 12)])[0][0][0]
    assert mixed[0][0][0] != base_alone


def test_prompt_logprobs_match_forward_pass(engine, adapters):
    for task, adapter in adapters:
        prompt = engine.fmt.encode_prompt(list(task.train), task.test_inputs[0])
        for cand in (task.test_outputs[0], as_grid([[5, 6], [7, 8]])):
            answer = engine.fmt.encode_answer(cand)
            v = engine.sampler.score(prompt, answer, adapter)
            f = engine.forward.score(prompt, answer, adapter)
            assert v == pytest.approx(f, abs=1e-3)


def _validate(sub_path, challenges):
    counts = challenge_counts(load_challenges(challenges, solutions=None))
    return validate_submission(json.loads(sub_path.read_text()), counts)


def test_end_to_end_three_evaluation_tasks(engine, tmp_path):
    from submission.runtime.run import run

    tasks = dict(list(load_dataset("arc-agi-2", "evaluation").items())[:3])
    challenges, _ = export_kaggle(tasks, tmp_path / "data", "evaluation")
    out = tmp_path / "submission.json"
    report = run(challenges, None, out, tmp_path / "work", SMALL, all_policies=True, engine=engine)
    assert _validate(out, challenges) == []
    assert set(report["per_task"]) == set(tasks)
    for task_id, rec in report["per_task"].items():
        assert rec["ttt"]["steps"] == rec["ttt"]["planned_steps"] > 0
        assert rec["ttt_data"]["samples"] == SMALL.ttt.max_samples
        assert rec["views"] >= SMALL.sampling.n_views * tasks[task_id].n_test
        assert {"ttt_s", "sample_s", "select_s"} <= set(rec["timing"])
        assert len(rec["tests"]) == tasks[task_id].n_test
    assert not any((tmp_path / "work" / "adapters").iterdir())  # deleted once answered
    saved = json.loads((tmp_path / "work" / "run.json").read_text())
    assert saved["backends"]["worker_info"]["0"]["sampler_backend"] == "vllm" and "fallbacks" in saved
    # A rerun with the same workdir resumes: nothing is trained again.
    again = run(challenges, None, out, tmp_path / "work", SMALL, all_policies=True, engine=engine)
    assert again["resumed"] == 3 and _validate(out, challenges) == []


def test_ttt_learns_what_the_base_model_cannot(engine, tmp_path):
    """Per-task adapters, served together by vLLM, solve a synthetic family the base model fails."""
    from submission.runtime.run import run

    tasks = {t.id: t for t in (zeros_task(f"sq{s}", 2, 10 + s) for s in (1, 2, 3))}
    challenges, _ = export_kaggle(tasks, tmp_path / "data", "evaluation")
    truth = {k: [grid_to_list(t.test_outputs[0])] for k, t in tasks.items()}
    cfg = SMALL.with_overrides(LEARN)
    results = {}
    for name, extra in (("ttt", []), ("base", ["ttt.enabled=false"])):
        out = tmp_path / f"{name}.json"
        run(challenges, None, out, tmp_path / name, cfg.with_overrides(extra), engine=engine)
        sub = json.loads(out.read_text())
        results[name] = {k: sub[k][0]["attempt_1"] == truth[k][0] for k in tasks}
    assert all(results["ttt"].values()), results
    assert not any(results["base"].values()), results


def test_unsure_inputs_get_extra_views(engine, tmp_path):
    """Spare time buys more views where answers disagree (an untrained adapter: nothing agrees),
    and none where they agree (a trained one). The rates are given, not measured, so whether time
    is spare does not depend on how fast this machine is."""
    from submission.runtime.run import run

    rates = {"train_tokens_per_s": 1e6, "sample_tokens_per_s": 1e6, "score_tokens_per_s": 1e6}

    tasks = {"agree": zeros_task("agree", 2, 21), "unsure": zeros_task("unsure", 2, 22)}
    challenges, _ = export_kaggle(tasks, tmp_path / "data", "evaluation")
    extra = ["sampling.unsure_extra_views=3", "sampling.dfs_threshold=0"]
    reports = {}
    for name, learn in (("trained", LEARN), ("untrained", ["ttt.max_samples=1", "ttt.max_steps=1"])):
        cfg = SMALL.with_overrides(learn + extra)
        reports[name] = run(challenges, None, tmp_path / f"{name}.json", tmp_path / name, cfg,
                            engine=engine, calibration=rates)
    # Base-model views (2) are added only where the adapter found fewer than 2 distinct answers.
    n, base = SMALL.sampling.n_views, 2
    assert all(r["views"] in (n, n + base) for r in reports["trained"]["per_task"].values())
    assert reports["trained"]["fallbacks"].get("unsure_inputs_resampled", 0) == 0
    assert all(r["views"] in (n + 3, n + 3 + base) for r in reports["untrained"]["per_task"].values())
    assert reports["untrained"]["fallbacks"]["unsure_inputs_resampled"] == 2


def test_speculative_search_changes_the_cost_not_the_answers(engine, tmp_path):
    """`sampling.speculative` against plain DFS on the same run: the same
    submission and candidates, and later views take earlier views' answers without decoding."""
    from submission.runtime.run import run

    tasks = {t.id: t for t in (zeros_task(f"sp{s}", 2, 30 + s) for s in (1, 2))}
    challenges, _ = export_kaggle(tasks, tmp_path / "data", "evaluation")
    assert SMALL.sampling.speculative  # the default: speculative
    reports, subs = {}, {}
    for name, extra in (("spec", []), ("plain", ["sampling.speculative=false"])):
        out = tmp_path / f"{name}.json"
        reports[name] = run(challenges, None, out, tmp_path / name,
                            SMALL.with_overrides(LEARN + extra), engine=engine)
        subs[name] = json.loads(out.read_text())
    assert subs["spec"] == subs["plain"]
    for tid in tasks:
        a, b = (reports[n]["per_task"][tid] for n in ("spec", "plain"))
        assert [[(c["grid"], c["count"], c["views"]) for c in t["candidates"]] for t in a["tests"]] == \
               [[(c["grid"], c["count"], c["views"]) for c in t["candidates"]] for t in b["tests"]]
        assert a["chunk_search"]["drafts_accepted"] > 0 and b["chunk_search"]["drafts"] == 0
        assert a["chunk_search"]["decoded_tokens"] < b["chunk_search"]["decoded_tokens"]
