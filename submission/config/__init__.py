"""One frozen, nested configuration passed down every stage.

Every field has a default and a comment saying why (`sections.py`, where each section checks
itself); `Config.from_dict` rejects unknown keys and names the new key of a renamed one,
`with_overrides` takes `section.field=value` strings (CLI `--set`), and `to_dict` is what gets
saved beside every output (`fields.py`: types, parsing; `files.py`: presets, files, overrides).
This package only describes settings; it runs nothing.
"""

from __future__ import annotations

from submission.config.fields import flatten
from submission.config.files import explicit_keys, load_config, read_config_file
from submission.config.sections import (ANSWER_SECTIONS, LINEAR_MODULES, MAX_DFS_PATHS, MAX_EPOCHS,
                                        MAX_LORA_RANK, MAX_STEPS, MAX_VIEWS, MAX_WORKERS,
                                        MIN_STALL_S, MIN_TASK_CAP_S, RENAMED,
                                        RESCORE_AUGMENTATIONS_LIMIT, SEED_MAX, TRAIN_SECTIONS,
                                        BudgetConfig, Config, FinetuneConfig, LaneConfig,
                                        LoraConfig, ModelConfig, Policy, SamplingConfig,
                                        SelectionConfig, TrainConfig, TTTConfig, upgrade_json)
from submission.errors import ConfigError

__all__ = ["ANSWER_SECTIONS", "LINEAR_MODULES", "MAX_DFS_PATHS", "MAX_EPOCHS", "MAX_LORA_RANK",
           "MAX_STEPS", "MAX_VIEWS", "MAX_WORKERS", "MIN_STALL_S", "MIN_TASK_CAP_S", "RENAMED",
           "RESCORE_AUGMENTATIONS_LIMIT", "SEED_MAX", "TRAIN_SECTIONS", "BudgetConfig", "Config",
           "ConfigError", "FinetuneConfig", "LaneConfig", "LoraConfig", "ModelConfig", "Policy",
           "SamplingConfig", "SelectionConfig", "TTTConfig", "TrainConfig", "explicit_keys",
           "flatten", "load_config", "read_config_file", "upgrade_json"]
