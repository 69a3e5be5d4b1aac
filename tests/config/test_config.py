"""Tests of submission.config: defaults, dict round trips, strict keys and types, --set overrides,
choices, config files, immutability."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest

from submission.config import (LINEAR_MODULES, RENAMED, Config, FinetuneConfig, LoraConfig, ModelConfig,
                               SelectionConfig, TTTConfig, load_config)
from submission.errors import ConfigError

SECTIONS = ("model", "ttt", "finetune", "sampling", "selection", "budget", "lane")


def test_defaults_build():
    cfg = Config()
    assert tuple(cfg.to_dict()) == SECTIONS
    assert cfg.model.format == "auto"  # detected from the model's tokenizer
    assert cfg.ttt.lora.target_modules == LINEAR_MODULES
    assert cfg.selection.policy in ("vote", "poe", "count-nll")
    assert Config() == cfg


def test_to_dict_from_dict_round_trip():
    cfg = Config()
    data = cfg.to_dict()
    assert isinstance(data["ttt"], dict)
    assert Config.from_dict(data) == cfg
    # through JSON (tuples come back as lists)
    again = Config.from_dict(json.loads(json.dumps(data)))
    assert again == cfg and again.ttt.lora.target_modules == LINEAR_MODULES
    custom = cfg.with_overrides(["ttt.lora.r=16", "selection.policy=vote", "budget.workers=4"])
    assert Config.from_dict(json.loads(json.dumps(custom.to_dict()))) == custom
    assert custom != cfg


def test_from_dict_partial_keeps_defaults():
    cfg = Config.from_dict({"ttt": {"lora": {"r": 8}}, "sampling": {}})
    assert cfg.ttt.lora.r == 8
    assert cfg.ttt.lora.alpha == TTTConfig().lora.alpha
    assert cfg.sampling == Config().sampling
    assert Config.from_dict({}) == Config()


def test_from_dict_int_is_accepted_for_float():
    cfg = Config.from_dict({"ttt": {"learning_rate": 1}})
    assert cfg.ttt.learning_rate == 1.0 and type(cfg.ttt.learning_rate) is float


@pytest.mark.parametrize("data, name", [
    ({"tt": {"r": 8}}, "tt"),
    ({"nonsense": 1}, "nonsense"),
    ({"ttt": {"rank": 8}}, "rank"),
    ({"sampling": {"temperature": 1.0, "top_p": 0.9}}, "top_p"),
])
def test_unknown_section_or_key_raises_naming_it(data, name):
    with pytest.raises(ConfigError, match=f"'{name}'"):
        Config.from_dict(data)


@pytest.mark.parametrize("data, key", [
    ({"ttt": {"lora": {"r": "16"}}}, "ttt.lora.r"),  # string for int
    ({"ttt": {"lora": {"r": True}}}, "ttt.lora.r"),  # bool for int
    ({"ttt": {"lora": {"r": 16.0}}}, "ttt.lora.r"),  # float for int
    ({"ttt": {"learning_rate": "1e-4"}}, "ttt.learning_rate"),
    ({"ttt": {"learning_rate": False}}, "ttt.learning_rate"),  # bool for float
    ({"ttt": {"lora": {"rslora": 1}}}, "ttt.lora.rslora"),  # int for bool
    ({"ttt": {"lora": {"rslora": "false"}}}, "ttt.lora.rslora"),
    ({"ttt": {"lora": {"target_modules": "q_proj"}}}, "ttt.lora.target_modules"),
    ({"ttt": {"lora": {"target_modules": ["q_proj", 3]}}}, "ttt.lora.target_modules"),
    ({"model": {"format": 3}}, "model.format"),
    ({"ttt": 5}, "ttt"),  # a section that is not an object
    ({"budget": [1, 2]}, "budget"),
])
def test_wrong_types_raise(data, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        Config.from_dict(data)


def test_from_dict_rejects_non_object():
    with pytest.raises(ConfigError, match="top level"):
        Config.from_dict([1, 2])  # type: ignore[arg-type]


def test_with_overrides_parses_types():
    base = Config()
    cfg = base.with_overrides(["ttt.lora.r=16", "sampling.temperature=0.7",
                               "ttt.lora.target_modules=q_proj,v_proj", "ttt.lora.rslora=false"])
    assert cfg.ttt.lora.r == 16 and type(cfg.ttt.lora.r) is int
    assert cfg.sampling.temperature == 0.7 and type(cfg.sampling.temperature) is float
    assert cfg.ttt.lora.target_modules == ("q_proj", "v_proj")
    assert cfg.ttt.lora.rslora is False
    assert base == Config()  # the original is untouched
    assert cfg.with_overrides([]) == cfg


@pytest.mark.parametrize("raw, expected", [
    ("true", True), ("True", True), ("1", True), ("yes", True),
    ("false", False), ("FALSE", False), ("0", False), ("no", False),
])
def test_bool_override_spellings(raw, expected):
    assert Config().with_overrides([f"ttt.lora.rslora={raw}"]).ttt.lora.rslora is expected


def test_override_values_and_spaces():
    cfg = Config().with_overrides([" ttt.lora.r = 32 ", "selection.policy=poe", "model.dtype=float32",
                                   "budget.time_budget_s=60", "ttt.lora.target_modules= q_proj , o_proj "])
    assert cfg.ttt.lora.r == 32
    assert cfg.selection.policy == "poe" and cfg.model.dtype == "float32"
    assert cfg.budget.time_budget_s == 60.0 and type(cfg.budget.time_budget_s) is float
    assert cfg.ttt.lora.target_modules == ("q_proj", "o_proj")
    # later overrides win
    assert Config().with_overrides(["ttt.lora.r=8", "ttt.lora.r=4"]).ttt.lora.r == 4


@pytest.mark.parametrize("item, needle", [
    ("ttt.lora.r", "section.field=value"),  # no '='
    ("r=16", "section.field=value"),  # no section
    ("ttt.lora.r.x=16", "section.field=value"),  # too deep
    ("=16", "section.field=value"),
    ("ttt.rank=16", "'rank'"),  # unknown field
    ("tt.r=16", "'tt'"),  # unknown section
    ("ttt.lora.r=abc", "ttt.lora.r"),
    ("ttt.lora.r=1.5", "ttt.lora.r"),
    ("ttt.lora.r=true", "ttt.lora.r"),  # bool for int
    ("ttt.lora.r=", "ttt.lora.r"),
    ("ttt.lora.rslora=maybe", "ttt.lora.rslora"),
    ("sampling.temperature=hot", "sampling.temperature"),
])
def test_bad_overrides_raise(item, needle):
    with pytest.raises(ConfigError) as info:
        Config().with_overrides([item])
    assert needle in str(info.value)


@pytest.mark.parametrize("item, needle", [
    ("selection.policy=foo", "selection.policy"),
    ("model.dtype=int8", "model.dtype"),
    ("ttt.backend=tensorflow", "ttt.backend"),
    ("sampling.backend=sglang", "sampling.backend"),
    ("selection.rescore_backend=magic", "selection.rescore_backend"),
    ("ttt.lora.r=0", "ttt.lora.r"),
    ("ttt.learning_rate=-1e-4", "ttt.learning_rate"),
    ("sampling.n_views=0", "sampling.n_views"),
    ("budget.workers=-1", "budget.workers"),
    ("sampling.gpu_memory_utilization=1.5", "gpu_memory_utilization"),
    ("sampling.gpu_memory_utilization=-0.1", "gpu_memory_utilization"),
    ("budget.ttt_fraction=1.0", "ttt_fraction"),
    ("sampling.n_samples=-1", "n_samples"),
    ("ttt.max_steps=-1", "max_steps"),
])
def test_choices_and_ranges_validated(item, needle):
    with pytest.raises(ConfigError, match=needle):
        Config().with_overrides([item])


def test_choices_validated_in_from_dict_and_constructor():
    with pytest.raises(ConfigError, match="foo"):
        Config.from_dict({"selection": {"policy": "foo"}})
    with pytest.raises(ConfigError, match="selection.policy"):
        Config(selection=SelectionConfig(policy="foo"))


@pytest.mark.parametrize("modules", ["q_proj,lm_head", "lm_head", "embed_tokens,v_proj"])
def test_lm_head_and_embeddings_rejected(modules):
    with pytest.raises(ConfigError, match="lm_head|embed_tokens"):
        Config().with_overrides([f"ttt.lora.target_modules={modules}"])
    with pytest.raises(ConfigError, match="target_modules"):
        Config.from_dict({"ttt": {"lora": {"target_modules": modules.split(",")}}})


@pytest.mark.parametrize("item", ["ttt.learning_rate=nan", "budget.time_budget_s=nan",
                                  "budget.task_cap_s=nan"])
def test_nan_is_not_positive(item):
    with pytest.raises(ConfigError):
        Config().with_overrides([item])


def test_unknown_model_format_rejected():
    with pytest.raises(ConfigError, match="model.format"):
        Config().with_overrides(["model.format=qwen"])


# --- files -----------------------------------------------------------------------------------

def test_load_config_defaults():
    assert load_config(None) == Config()
    assert load_config(None, ["ttt.lora.r=8"]).ttt.lora.r == 8


def test_load_config_json(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"ttt": {"lora": {"r": 16, "target_modules": ["q_proj", "v_proj"]}},
                                "sampling": {"temperature": 0.5}}))
    cfg = load_config(path)
    assert cfg.ttt.lora.r == 16 and cfg.ttt.lora.target_modules == ("q_proj", "v_proj")
    assert cfg.sampling.temperature == 0.5
    assert cfg.ttt.lora.alpha == TTTConfig().lora.alpha
    # overrides apply after the file
    assert load_config(str(path), ["ttt.lora.r=4"]).ttt.lora.r == 4
    # a saved to_dict loads back to the same config
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(cfg.to_dict()))
    assert load_config(saved) == cfg


def test_load_config_toml(tmp_path):
    path = tmp_path / "cfg.toml"
    path.write_text('[ttt.lora]\nr = 16\nrslora = false\ntarget_modules = ["q_proj", "o_proj"]\n'
                    '\n[selection]\npolicy = "vote"\n\n[budget]\ntime_budget_s = 600\n')
    cfg = load_config(path, ["sampling.n_views=8"])
    assert cfg.ttt.lora.r == 16 and cfg.ttt.lora.rslora is False
    assert cfg.ttt.lora.target_modules == ("q_proj", "o_proj")
    assert cfg.selection.policy == "vote"
    assert cfg.budget.time_budget_s == 600.0
    assert cfg.sampling.n_views == 8


@pytest.mark.parametrize("name, text, needle", [
    ("list.json", "[1, 2]", "top level must be an object"),
    ("str.json", '"hello"', "top level must be an object"),
    ("bad.json", "{not json", "bad.json"),
    ("bad.toml", "[ttt\nr = ", "bad.toml"),
    ("unknown.json", '{"ttt": {"rank": 3}}', "'rank'"),
    ("unknown.toml", "[foo]\nx = 1\n", "'foo'"),
    ("type.toml", '[ttt.lora]\nr = "16"\n', "ttt.lora.r"),
])
def test_load_config_bad_files(tmp_path, name, text, needle):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert needle in str(info.value)


def test_load_config_missing_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match="nope.json"):
        load_config(missing)


def test_config_is_frozen():
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.ttt = TTTConfig(lora=LoraConfig(r=8))  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.ttt.lora.r = 8  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.format = "architects"  # type: ignore[misc]
    assert cfg.ttt.lora.r == TTTConfig().lora.r
    assert isinstance(cfg.model, ModelConfig)
    hash(cfg)  # frozen dataclasses of hashable fields are hashable


def test_explicit_keys_from_file_and_overrides(tmp_path):
    from submission.config import explicit_keys

    path = tmp_path / "c.toml"
    path.write_text('[budget]\nworkers = 2\n[ttt.lora]\nr = 8\n')
    assert explicit_keys(path, ["sampling.n_views=4"]) == {"budget.workers", "ttt.lora.r", "sampling.n_views"}
    assert explicit_keys(None) == frozenset()


# --- hostile values --------------------------------------------------------------------------

@pytest.mark.parametrize("item", [
    "budget.time_budget_s=inf", "budget.time_budget_s=1e309", "budget.task_cap_s=Infinity",
    "budget.max_scale=inf", "budget.prior_sample_tokens_per_s=1e400", "ttt.lora.dropout=nan",
    "ttt.weight_decay=inf", "ttt.max_grad_norm=inf", "finetune.learning_rate=inf",
    "sampling.temperature=nan", "selection.poe_offset=-inf", "sampling.dfs_threshold=-inf"])
def test_non_finite_floats_rejected(item):
    with pytest.raises(ConfigError, match="must be finite"):
        Config().with_overrides([item])


def test_non_finite_floats_rejected_in_files(tmp_path):
    js = tmp_path / "c.json"
    js.write_text('{"budget": {"time_budget_s": 1e309}}')
    with pytest.raises(ConfigError, match="budget.time_budget_s=inf: must be finite"):
        load_config(js)
    js.write_text('{"selection": {"poe_offset": NaN}}')
    with pytest.raises(ConfigError, match="selection.poe_offset=nan: must be finite"):
        load_config(js)
    toml = tmp_path / "c.toml"
    toml.write_text("[budget]\nprior_train_tokens_per_s = inf\n")
    with pytest.raises(ConfigError, match="must be finite"):
        load_config(toml)


@pytest.mark.parametrize("item", ["ttt.seed=-1", "finetune.seed=-1", "sampling.seed=-7",
                                  "sampling.seed=4294967296", "ttt.seed=" + "9" * 30])
def test_seeds_out_of_range_rejected(item):
    with pytest.raises(ConfigError, match=item.split("=")[0].replace(".", r"\.") + ".*0..4294967295"):
        Config().with_overrides([item])


def test_seed_bounds_accepted():
    cfg = Config().with_overrides(["ttt.seed=0", "sampling.seed=4294967295", "finetune.seed=12"])
    assert cfg.sampling.seed == 2**32 - 1


@pytest.mark.parametrize("modules, needle", [
    ("", "empty"), (",", "empty"), ("q_proj,q_proj", "twice"), ("q proj", "not module names"),
    ("../x", "not module names"), ("q_proj,", None), ("a..b", "not module names"),
    (".q_proj", "not module names"), ("q_proj;rm", "not module names")])
def test_target_modules_validated(modules, needle):
    if needle is None:  # a trailing comma is only an empty item, dropped by the parser
        assert Config().with_overrides([f"ttt.lora.target_modules={modules}"]).ttt.lora.target_modules == (
            "q_proj",)
        return
    with pytest.raises(ConfigError, match=f"ttt.lora.target_modules.*{needle}"):
        Config().with_overrides([f"ttt.lora.target_modules={modules}"])
    with pytest.raises(ConfigError, match="finetune.lora.target_modules"):
        Config.from_dict({"finetune": {"lora": {"target_modules": modules.split(",") if modules else []}}})


def test_dotted_module_names_accepted():
    cfg = Config().with_overrides(["ttt.lora.target_modules=model.layers.0.mlp.up_proj,q_proj"])
    assert cfg.ttt.lora.target_modules == ("model.layers.0.mlp.up_proj", "q_proj")


def test_lora_rank_limited_to_what_vllm_serves():
    assert Config().with_overrides(["ttt.lora.r=512"]).ttt.lora.r == 512
    with pytest.raises(ConfigError, match="ttt.lora.r=513.*512"):
        Config().with_overrides(["ttt.lora.r=513"])
    assert Config().with_overrides(["finetune.lora.r=1024"]).finetune.lora.r == 1024  # merged, not served


@pytest.mark.parametrize("item", ["ttt.lora.dropout=1.0", "ttt.lora.dropout=-0.1",
                                  "ttt.weight_decay=-1", "ttt.warmup_fraction=1.5",
                                  "finetune.max_grad_norm=0", "sampling.temperature=-1"])
def test_training_and_sampling_ranges(item):
    with pytest.raises(ConfigError, match=item.split(".")[0]):
        Config().with_overrides([item])


def test_huge_and_deep_values_give_short_errors(tmp_path):
    with pytest.raises(ConfigError, match="ttt.lora.r") as info:
        Config().with_overrides(["ttt.lora.r=" + "1" * 5000])
    assert len(str(info.value)) < 200
    with pytest.raises(ConfigError) as info:
        Config().with_overrides(["model.format=" + "x" * 100_000])
    assert len(str(info.value)) < 300
    path = tmp_path / "c.json"
    path.write_text('{"ttt": {"lora": {"target_modules": ' + "[" * 500 + "]" * 500 + "}}}")
    with pytest.raises(ConfigError, match="ttt.lora.target_modules") as info:
        load_config(path)
    assert len(str(info.value)) < 200


@pytest.mark.parametrize("name, text, needle", [
    ("deep.json", '{"ttt": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ("deep.toml", "[ttt]\nr = " + "[" * 100_000 + "]" * 100_000 + "\n", "nested too deeply"),
    ("big.json", '{"ttt": {"lora": {"r": ' + "1" * 5000 + "}}}", "digits"),
])
def test_hostile_config_files(tmp_path, name, text, needle):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle) as info:
        load_config(path)
    assert name in str(info.value)


# --- absurd sizes and the finetune section ---------------------------------------------------

ABSURD = [  # (override, what the message must name: field and the allowed range)
    ("sampling.n_views=1000000", "1..256"), ("sampling.dfs_max_paths=1000000", "1..64"),
    ("selection.rescore_augmentations=1000000", "1..64"), ("ttt.max_steps=1000000000", "0..1e+06"),
    ("finetune.max_steps=1000000000", "0..1e+06"), ("ttt.epochs=100000000", "1..100"),
    ("finetune.epochs=100000000", "1..100"), ("budget.workers=1000", "0..64"),
    ("budget.stall_s=1e-300", ">= 10"), ("budget.task_cap_s=1e-9", ">= 60"),
    ("sampling.unsure_extra_views=1000000", "0..256")]


@pytest.mark.parametrize("item, allowed", ABSURD)
def test_absurd_sizes_name_the_allowed_range(item, allowed):
    key, value = item.split("=")
    with pytest.raises(ConfigError) as info:
        Config().with_overrides([item])
    msg = str(info.value)
    assert f"config {key}=" in msg and allowed in msg, msg
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=key):  # files too
        Config.from_dict({section: {name: json.loads(value)}})


def test_range_limits_themselves_are_accepted():
    from submission.config import (
        MAX_DFS_PATHS,
        MAX_EPOCHS,
        MAX_STEPS,
        MAX_VIEWS,
        MAX_WORKERS,
        MIN_STALL_S,
        MIN_TASK_CAP_S,
        RESCORE_AUGMENTATIONS_LIMIT,
    )

    cfg = Config().with_overrides([
        f"sampling.n_views={MAX_VIEWS}", f"sampling.dfs_max_paths={MAX_DFS_PATHS}",
        f"selection.rescore_augmentations={RESCORE_AUGMENTATIONS_LIMIT}",
        f"ttt.max_steps={MAX_STEPS}", f"finetune.epochs={MAX_EPOCHS}",
        f"budget.workers={MAX_WORKERS}", f"budget.stall_s={MIN_STALL_S}",
        f"budget.task_cap_s={MIN_TASK_CAP_S}"])
    assert cfg.sampling.n_views == MAX_VIEWS and cfg.budget.workers == MAX_WORKERS
    for item in (f"sampling.n_views={MAX_VIEWS + 1}", f"budget.workers={MAX_WORKERS + 1}",
                 f"budget.stall_s={MIN_STALL_S * 0.99}", f"ttt.epochs={MAX_EPOCHS + 1}"):
        with pytest.raises(ConfigError):
            Config().with_overrides([item])


def test_absurd_size_on_the_cli_is_one_error_line(tmp_path, capsys):
    from submission import cli

    code = cli.main(["run", "--challenges", str(tmp_path / "c.json"), "--model", str(tmp_path),
                     "--out", str(tmp_path / "o.json"), "--workdir", str(tmp_path / "w"),
                     "--set", "sampling.n_views=1000000"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err
    assert "sampling.n_views=1000000" in err and "1..256" in err
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("field, value", [("grad_accum", "0"), ("learning_rate", "-1"), ("lora.r", "0"),
                                          ("lora.alpha", "0"), ("batch_size", "0"),
                                          ("epochs", "0")])
def test_finetune_is_validated_like_ttt(field, value):
    for section in ("ttt", "finetune"):
        with pytest.raises(ConfigError, match=f"config {section}.{field} must be positive"):
            Config().with_overrides([f"{section}.{field}={value}"])
    *tables, name = field.split(".")
    data = {name: json.loads(value)}
    for table in reversed(tables):
        data = {table: data}
    with pytest.raises(ConfigError, match=f"finetune.{field}"):
        Config.from_dict({"finetune": data})


def test_lane_section_defaults_and_checks():
    lane = Config().lane
    assert lane.enabled and lane.policy == "lane-first" and lane.processes == 0
    assert not Config().with_overrides(["lane.enabled=false"]).lane.enabled
    for bad in ("lane.policy=best", "lane.nice=20", "lane.task_cap_s=0", "lane.processes=-1"):
        with pytest.raises(ConfigError):
            Config().with_overrides([bad])


# --- the LoRA tables, renamed keys, choices -------------------------------------------------

@pytest.mark.parametrize("old, new", sorted(RENAMED.items()))
def test_an_old_flat_lora_key_names_its_new_key(old, new, tmp_path):
    section, name = old.split(".")
    for build in (lambda: Config().with_overrides([f"{old}=8"]),
                  lambda: Config.from_dict({section: {name: 8}})):
        with pytest.raises(ConfigError) as info:
            build()
        assert str(info.value) == f"config {old}: renamed to {new}"
    path = tmp_path / "old.toml"
    path.write_text(f"[{section}]\n{name} = 8\n")
    with pytest.raises(ConfigError, match=f"config {old}: renamed to {new}$"):
        load_config(path)


@pytest.mark.parametrize("where", ["set", "file"])
def test_an_old_flat_lora_key_on_the_cli_is_one_error_line(tmp_path, capsys, where):
    from submission import cli

    path = tmp_path / "c.toml"
    path.write_text("[ttt]\nlora_alpha = 16\n")
    given = ["--set", "ttt.r=16"] if where == "set" else ["--config", str(path)]
    code = cli.main(["run", "--challenges", str(tmp_path / "c.json"), "--model", str(tmp_path),
                     "--out", str(tmp_path / "o.json"), "--workdir", str(tmp_path / "w"), *given])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err
    assert ("ttt.lora.r" if where == "set" else "ttt.lora.alpha") in err


def test_ttt_and_finetune_share_one_lora_section_type():
    cfg = Config.from_dict({"finetune": {"lora": {"r": 16}}, "ttt": {"lora": {"alpha": 8}}})
    assert type(cfg.ttt.lora) is type(cfg.finetune.lora) is LoraConfig
    assert cfg.finetune.lora == dataclasses.replace(FinetuneConfig().lora, r=16)  # its own defaults
    assert (cfg.finetune.lora.alpha, cfg.ttt.lora.r, cfg.ttt.lora.alpha) == (64, 64, 8)
    ttt_only = {"enabled", "max_samples", "skip_first_output"}
    assert not ttt_only & {f.name for f in dataclasses.fields(FinetuneConfig)}  # no unused fields
    assert Config().with_overrides(["finetune.lora.rslora=true"]).finetune.lora.rslora is True
    with pytest.raises(ConfigError, match="ttt.lora is a table"):
        Config().with_overrides(["ttt.lora=8"])


def test_a_config_file_lora_table_merges_over_the_preset(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[ttt.lora]\nalpha = 8\n")
    cfg = load_config(path, preset="nvarc-2025")
    assert (cfg.ttt.lora.r, cfg.ttt.lora.alpha, cfg.ttt.learning_rate) == (256, 8, 5e-5)


def test_choices_are_literal_types_and_their_users_read_them():
    from submission.answers.select import POLICIES
    from submission.arc.formats import FORMAT_CHOICES

    literal = {f"{s}.{k}": typing.get_args(tp) for s, section in typing.get_type_hints(Config).items()
               for k, tp in typing.get_type_hints(section).items()
               if typing.get_origin(tp) is typing.Literal}
    assert set(literal) == {"model.format", "model.dtype", "ttt.backend", "finetune.backend",
                            "sampling.backend", "selection.policy", "selection.rescore_backend",
                            "lane.policy"}
    assert literal["model.format"] == FORMAT_CHOICES and literal["selection.policy"] == POLICIES
    for key, allowed in literal.items():
        section, name = key.split(".")
        with pytest.raises(ConfigError, match=f"config {key}=3: choose one of {', '.join(allowed)}"):
            Config.from_dict({section: {name: 3}})
