"""Initial fine-tuning on CPU: data sources, leakage guard, resumable checkpoints, exact merge."""

import json

import numpy as np
import pytest

from submission.config import Config
from submission.errors import InputError
from submission.finetune.run import latest_checkpoint, leakage_report, load_sources
from submission.arc.tasks import load_dataset, tasks_to_challenges, tasks_to_solutions

FT = Config().with_overrides([
    "finetune.samples_per_task=2", "finetune.grad_accum=2", "finetune.checkpoint_every=2",
    "finetune.lora.r=8", "finetune.lora.alpha=16", "finetune.learning_rate=1e-3",
    "model.max_seq_len=4096"])


def write_task_dir(folder, tasks):
    folder.mkdir(parents=True, exist_ok=True)
    for k, v in tasks.items():
        ch = tasks_to_challenges({k: v})[k]
        for i, o in enumerate(tasks_to_solutions({k: v})[k]):
            ch["test"][i]["output"] = o
        (folder / f"{k}.json").write_text(json.dumps(ch))
    return folder


def test_evaluation_split_refused_unless_allowed():
    with pytest.raises(InputError, match="refusing to train on an evaluation split"):
        load_sources("arc-agi-2:evaluation")
    assert len(load_sources("arc-agi-2:evaluation", allow_eval=True)) == 120
    with pytest.raises(InputError, match="not a dataset:split"):
        load_sources("no-such-thing")


def test_leakage_found_by_id_and_by_grids(tmp_path):
    train2 = load_dataset("arc-agi-2", "training")
    report = leakage_report(train2)
    # ARC-AGI-2's training set holds many ARC-AGI-1 evaluation tasks.
    assert len(report["arc-agi-1:evaluation"]["by_id"]) > 50
    eval2 = load_dataset("arc-agi-2", "evaluation")
    renamed = {"renamed0": next(iter(eval2.values()))}
    folder = write_task_dir(tmp_path / "extra", renamed)
    tasks = load_sources(str(folder))
    r = leakage_report(tasks)["arc-agi-2:evaluation"]
    assert r["by_id"] == [] and r["by_grids"] == {"renamed0": [next(iter(eval2))]}


def test_cli_refuses_eval_split(tmp_path, capsys, tiny_model):
    from submission.cli import main

    code = main(["finetune", "--model", str(tiny_model), "--data", "arc-agi-1:evaluation",
                 "--out", str(tmp_path)])
    assert code == 2 and "--allow-eval" in capsys.readouterr().err


@pytest.mark.slow
def test_finetune_resume_merge_and_run(tmp_path, tiny_model):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from submission.model.engine import build_engine
    from submission.finetune.run import finetune
    from submission.runtime.run import run
    from submission.arc.submit import challenge_counts, validate_submission
    from submission.arc.tasks import export_kaggle, load_challenges

    data = write_task_dir(tmp_path / "data", dict(list(load_dataset("arc-agi-2", "training").items())[:5]))
    full = finetune(tiny_model, str(data), tmp_path / "a", FT, log=lambda m: None)
    assert full["steps"] == full["planned_steps"] == 5 and full["resumed_from"] is None
    # An interrupted run: only the step-4 checkpoint survives; resuming must reach the same adapter.
    finetune(tiny_model, str(data), tmp_path / "b", FT, log=lambda m: None)
    last = latest_checkpoint(tmp_path / "b")
    import shutil

    shutil.rmtree(last)
    assert latest_checkpoint(tmp_path / "b").name == "step-0000004"
    resumed = finetune(tiny_model, str(data), tmp_path / "b", FT, log=lambda m: None)
    assert resumed["resumed_from"].endswith("step-0000004") and resumed["steps"] == 5
    wa = load_file(str(latest_checkpoint(tmp_path / "a") / "adapter_model.safetensors"))
    wb = load_file(str(latest_checkpoint(tmp_path / "b") / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k
    assert any(float(v.abs().sum()) > 0 for k, v in wa.items() if "lora_B" in k)

    # The merged model equals base + LoRA: same logits and the same greedy answer.
    merged = AutoModelForCausalLM.from_pretrained(full["model"])
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    lora = PeftModel.from_pretrained(base, str(latest_checkpoint(tmp_path / "a")))
    prompt = torch.tensor([[14, 11, 10, 1, 2, 10, 3, 4, 15, 14, 12, 10]])
    with torch.no_grad():
        assert torch.allclose(merged(prompt).logits, lora(prompt).logits, atol=1e-4)
        g1 = merged.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=13)
        g2 = lora.generate(input_ids=prompt, max_new_tokens=12, do_sample=False, pad_token_id=13)
    assert g1.tolist() == g2.tolist()

    # `run` accepts the merged model.
    evaluation = load_dataset("arc-agi-2", "evaluation")
    small = sorted(evaluation, key=lambda k: sum(g.size for p in evaluation[k].train for g in p))[:2]
    ch, _ = export_kaggle({k: evaluation[k] for k in small}, tmp_path / "eval", "evaluation")
    # greedy only: a random model rarely stops, so every extra search path costs a full answer
    cfg = Config().with_overrides(["ttt.lora.r=8", "ttt.lora.alpha=16", "ttt.max_samples=2",
                                   "sampling.n_views=2", "sampling.backend=transformers",
                                   "sampling.dfs_threshold=0", "sampling.unsure_extra_views=0",
                                   "selection.rescore_augmentations=2", "selection.max_rescore=2",
                                   "model.max_seq_len=4096"])
    out = tmp_path / "submission.json"
    run(ch, None, out, tmp_path / "work", cfg, engine=build_engine(full["model"], cfg))
    counts = challenge_counts(load_challenges(ch, solutions=None))
    assert validate_submission(json.loads(out.read_text()), counts) == []
    assert np.isfinite(full["final_loss"])


@pytest.mark.slow
def test_finetune_full_modules_are_trained_and_merged(tmp_path, tiny_model):
    """finetune.modules_to_save trains embed_tokens/lm_head in full; the merge carries them over."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from submission.finetune.run import finetune

    data = write_task_dir(tmp_path / "data", dict(list(load_dataset("arc-agi-2", "training").items())[:2]))
    cfg = FT.with_overrides(["finetune.modules_to_save=embed_tokens,lm_head",
                             "finetune.samples_per_task=1", "finetune.grad_accum=1"])
    report = finetune(tiny_model, str(data), tmp_path / "out", cfg, log=lambda m: None)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    merged = AutoModelForCausalLM.from_pretrained(report["model"])
    assert not torch.equal(base.lm_head.weight, merged.lm_head.weight)
    assert not torch.equal(base.get_input_embeddings().weight, merged.get_input_embeddings().weight)
    lora = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model)),
                                     str(latest_checkpoint(tmp_path / "out")))
    prompt = torch.tensor([[14, 11, 10, 1, 2, 15, 14, 12, 10]])
    with torch.no_grad():
        assert torch.allclose(merged(prompt).logits, lora(prompt).logits, atol=1e-4)


@pytest.fixture(scope="module")
def tied_finetune(tmp_path_factory):
    """A tiny base with tied embeddings (as Qwen3-4B), fine-tuned with embed_tokens and lm_head
    trained in full, and with lm_head alone."""
    from submission.finetune.run import finetune
    from submission.model.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("tied")
    base = make_tiny_model(root / "base", tie_embeddings=True)
    data = write_task_dir(root / "data", dict(list(load_dataset("arc-agi-2", "training").items())[:2]))
    out = {}
    for name, modules in (("both", "embed_tokens,lm_head"), ("head", "lm_head")):
        cfg = FT.with_overrides([f"finetune.modules_to_save={modules}", "finetune.backend=peft",
                                 "finetune.samples_per_task=1", "finetune.grad_accum=1"])
        out[name] = finetune(base, str(data), root / name, cfg, log=lambda m: None)
    return base, root, out


PROMPT = [14, 11, 10, 1, 2, 15, 14, 12, 10]
ANSWERS = ([3, 4, 10, 5, 15], [1, 10, 15], [7, 7, 7, 10, 2, 2, 2, 10, 15])


def _answer_logprob(model, prompt, answer) -> float:
    import torch

    ids = torch.tensor([list(prompt) + list(answer)])
    with torch.no_grad():
        lp = torch.log_softmax(model(ids).logits[0].float(), -1)
    return sum(float(lp[len(prompt) - 1 + i, t]) for i, t in enumerate(answer))


def test_trained_embeddings_of_a_tied_base_are_untied_in_training_and_merge(tied_finetune):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from submission.model.backends.peft_loader import load_peft

    base, root, reports = tied_finetune
    assert json.loads((base / "config.json").read_text())["tie_word_embeddings"] is True
    # training: lm_head has its own matrix and the config says so
    cfg = FT.with_overrides(["finetune.modules_to_save=embed_tokens,lm_head"])
    model, _, _ = load_peft(base, cfg, cfg.finetune)
    inner = model.get_base_model()
    assert inner.config.tie_word_embeddings is False
    assert inner.lm_head.weight.data_ptr() != inner.get_input_embeddings().weight.data_ptr()
    tied_base = AutoModelForCausalLM.from_pretrained(str(base))
    for name, report in reports.items():
        merged_dir = root / name / "model"
        assert json.loads((merged_dir / "config.json").read_text())["tie_word_embeddings"] is False
        weights = load_file(str(merged_dir / "model.safetensors"))
        head, embed = weights["lm_head.weight"], weights["model.embed_tokens.weight"]
        assert not torch.equal(head, embed)  # both saved, both as trained
        assert not torch.equal(head, tied_base.lm_head.weight)
        assert torch.equal(embed, tied_base.get_input_embeddings().weight) == (name == "head")
        merged = AutoModelForCausalLM.from_pretrained(str(merged_dir))
        lora = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)),
                                         str(latest_checkpoint(root / name)))
        for answer in ANSWERS:
            assert _answer_logprob(merged, PROMPT, answer) == pytest.approx(
                _answer_logprob(lora, PROMPT, answer), abs=1e-4)


@pytest.mark.slow
def test_vllm_serves_the_merged_untied_model_as_peft_trained_it(tied_finetune):
    """vLLM 0.32.0 (the CPU engine) scores answers under the merged model exactly as the peft
    model that was trained does; a re-tied lm_head (the embeddings' matrix) would not."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from submission.model.backends.vllm_sampler import VLLMSampler

    base, root, _ = tied_finetune
    cfg = Config().with_overrides(["model.max_seq_len=512", "sampling.max_num_seqs=8"])
    for name in ("both", "head"):
        lora = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)),
                                         str(latest_checkpoint(root / name))).eval()
        retied = AutoModelForCausalLM.from_pretrained(str(root / name / "model")).eval()
        retied.lm_head.weight = retied.get_input_embeddings().weight  # what a re-tie would serve
        vllm = VLLMSampler(root / name / "model", cfg, stop_ids=[], enable_lora=False,
                           dtype="float32")
        try:
            for answer in ANSWERS:
                want = _answer_logprob(lora, PROMPT, answer)
                assert vllm.score(PROMPT, answer, None) == pytest.approx(want, abs=1e-3)
                assert abs(_answer_logprob(retied, PROMPT, answer) - want) > 1e-2
        finally:
            del vllm
