"""show-prompt: the exact text and token ids a model is given for one test input.

Reads only the model directory's tokenizer files (and `config.json`, if there, to check the ids fit
the model's vocabulary): no weights are loaded, so a user can check in seconds that a checkpoint and
the format agree before a long run. The prompt is the task's demonstrations in file order and the
test input, untransformed (the pipeline's identity view, before any demo is dropped for length); the
answer (when a solution is known) is what the model should generate, end token included. This
module does not sample, score or train.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from submission.errors import InputError
from submission.arc.formats import AUTO, get_format
from submission.arc.tasks import parse_task, read_json_object
from submission.model.tokenizer import load_tokenizer


def show_prompt(model_dir: str | Path, challenges: str | Path, task_id: str, *,
                test_index: int = 0, solutions: str | Path | None = None,
                format_name: str = AUTO) -> tuple[dict[str, Any], list[str]]:
    """({"format", "prompt_ids", "prompt_text", "bos_id"} plus "answer_ids" and "answer_text" when
    the solution is known, warnings). InputError names the file, task and field of a bad request;
    FormatError says why the tokenizer fits no format."""
    data = read_json_object(challenges)
    if task_id not in data:
        some = ", ".join(list(data)[:3])
        raise InputError(f"no such task ({len(data)} tasks in the file"
                         + (f", e.g. {some})" if some else ")"), file=str(challenges), task=task_id)
    sol = None
    if solutions is not None:
        sol_data = read_json_object(solutions)
        if task_id not in sol_data:
            raise InputError("no solutions for this task", file=str(solutions), task=task_id)
        sol = sol_data[task_id]
    task = parse_task(task_id, data[task_id], file=challenges, solutions=sol,
                      solutions_file=solutions)
    if not 0 <= test_index < task.n_test:
        raise InputError(f"test index {test_index} out of range: the task has {task.n_test} test "
                         f"input(s) (0..{task.n_test - 1})", file=str(challenges), task=task_id,
                         field=f"test[{test_index}]")
    tokenizer = load_tokenizer(model_dir)
    fmt = get_format(format_name, tokenizer, model_dir=model_dir)
    prompt = fmt.encode_prompt(list(task.train), task.test_inputs[test_index])
    result: dict[str, Any] = {"format": fmt.name, "prompt_ids": prompt,
                              "prompt_text": fmt.decode(prompt), "bos_id": fmt.bos_id}
    used = list(prompt)
    if task.test_outputs is not None:
        answer = fmt.encode_answer(task.test_outputs[test_index])
        result.update(answer_ids=answer, answer_text=fmt.decode(answer))
        used += answer
    return result, _warnings(model_dir, tokenizer, fmt, prompt, used)


def _warnings(model_dir: str | Path, tokenizer: Any, fmt: Any, prompt: list[int],
              used: list[int]) -> list[str]:
    """Mismatches worth a look: ids past the model's vocabulary, and a tokenizer that would encode
    the prompt text differently (the kernel never re-tokenizes text, but other tools would)."""
    out = []
    config = Path(model_dir) / "config.json"
    if config.is_file():
        try:
            cfg = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputError(f"cannot read: {err}", file=str(config)) from err
        cfg = cfg if isinstance(cfg, dict) else {}
        size = cfg.get("vocab_size")
        if size is None and isinstance(cfg.get("text_config"), dict):
            size = cfg["text_config"].get("vocab_size")
        if isinstance(size, int) and max(used) >= size:
            out.append(f"{config}: vocab_size {size}, but the format uses token id {max(used)}: "
                       "model and tokenizer do not match")
    body = prompt[1:] if fmt.bos_id is not None else prompt
    again = tokenizer.encode(fmt.decode(body), add_special_tokens=False)
    if again != body:
        at = next((i for i, (x, y) in enumerate(zip(again, body)) if x != y),
                  min(len(again), len(body)))
        out.append(f"the tokenizer itself encodes the prompt text to other ids (first difference at "
                   f"position {at + len(prompt) - len(body)}); the kernel uses the ids shown, one "
                   "token per piece")
    return out


def format_text(result: dict[str, Any], *, model_dir: str | Path, task_id: str,
                test_index: int) -> str:
    """The human-readable report: header, then text and ids of the prompt (and answer)."""
    bos = result["bos_id"]
    lines = [f"model   {model_dir}",
             f"format  {result['format']}   begin token: {'none' if bos is None else f'id {bos}'}",
             f"task    {task_id}, test input {test_index}: {len(result['prompt_ids'])} prompt tokens"
             + (f", {len(result['answer_ids'])} answer tokens" if "answer_ids" in result else
                ", answer unknown (give --solutions)"),
             "== prompt text ==", result["prompt_text"],
             "== prompt ids ==", json.dumps(result["prompt_ids"])]
    if "answer_ids" in result:
        lines += ["== answer text ==", result["answer_text"],
                  "== answer ids ==", json.dumps(result["answer_ids"])]
    return "\n".join(lines)
