"""Presets: the anchors' recipes as plain TOML in the package, loaded by --preset."""

import json
import re
import tomllib
from pathlib import Path

import pytest

from submission.config import Config, explicit_keys, flatten, load_config
from submission.presets import NAMES, read_preset

PRESETS = Path(__file__).resolve().parents[2] / "submission" / "presets"


@pytest.mark.parametrize("name", NAMES)
def test_every_preset_value_names_its_source(name):
    text = (PRESETS / f"{name}.toml").read_text()
    sections, notes = read_preset(name)
    assert set(sections) <= {"ttt", "sampling", "selection"} and notes
    for line in text.splitlines():
        if re.match(r"^\s*[a-z_]+\s*=", line) and not line.startswith(("name", "not_reproduced")):
            assert "#" in line, f"{name}: no source for {line!r}"
    cfg = flatten(load_config(None, preset=name).to_dict())
    for key, value in flatten(sections).items():
        assert cfg[key] == value
    assert set(flatten(sections)) <= explicit_keys(None, preset=name)


def test_preset_facts():
    nvarc, arch, mit = (load_config(None, preset=n) for n in NAMES)
    assert (nvarc.ttt.lora.r, nvarc.ttt.lora.alpha, nvarc.ttt.lora.rslora, nvarc.ttt.learning_rate) == \
        (256, 32, True, 5e-5)
    assert (nvarc.ttt.max_samples, nvarc.ttt.epochs, nvarc.sampling.n_views) == (128, 1, 16)
    assert (nvarc.sampling.dfs_threshold, nvarc.selection.policy) == (0.2, "count-nll")
    assert (arch.sampling.dfs_threshold, arch.selection.policy, arch.ttt.lora.r) == (0.17, "poe", 64)
    assert (mit.ttt.lora.r, mit.ttt.lora.alpha, mit.ttt.lora.rslora, mit.ttt.epochs) == (128, 16, False, 2)
    assert (mit.sampling.dfs_threshold, mit.selection.policy) == (0.0, "vote")
    assert any("embed_tokens" in n and "lm_head" in n for n in read_preset("nvarc-2025")[1])
    # a config file and --set still override the preset
    assert load_config(None, ["ttt.lora.r=8"], preset="nvarc-2025").ttt.lora.r == 8
    assert Config().ttt.lora.r != nvarc.ttt.lora.r


def test_presets_ship_with_the_package():
    data = tomllib.loads((PRESETS.parents[1] / "pyproject.toml").read_text())
    assert "presets/*.toml" in data["tool"]["setuptools"]["package-data"]["submission"]


def test_unknown_preset_is_refused(capsys):
    from submission.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["dry-run", "--preset", "nope"])
    assert exc.value.code == 2


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_dry_run_with_a_preset_on_the_tiny_model(name, tmp_path, capsys):
    from submission.cli import main

    small = ["ttt.lora.r=8", "ttt.max_samples=2", "ttt.epochs=1", "sampling.n_views=2",
             "sampling.unsure_extra_views=0", "selection.rescore_augmentations=2",
             "selection.max_rescore=2", "budget.workers=0", "budget.calibrate=false"]
    code = main(["dry-run", "--preset", name, "--limit", "1", "--dataset", "arc-agi-1",
                 "--workdir", str(tmp_path / "w"), *[a for s in small for a in ("--set", s)]])
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    assert "score" in json.loads(out.strip().splitlines()[-1])
    saved = json.loads((tmp_path / "w" / "run" / "run.json").read_text())
    cfg, want = saved["config"], load_config(None, preset=name)
    assert cfg["sampling"]["dfs_threshold"] == want.sampling.dfs_threshold
    assert cfg["selection"]["policy"] == want.selection.policy
    assert cfg["ttt"]["learning_rate"] == want.ttt.learning_rate
    assert f"preset {name}: not reproduced" in err
