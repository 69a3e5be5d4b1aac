"""Command line: `python -m submission <command>`. Thin: parses arguments (cli_args.py), calls the
command (commands.py), and turns every SubmissionError into a one-line message and exit code 2."""

from __future__ import annotations

import os
import sys

from submission.cli_args import build_parser
from submission.commands import COMMANDS
from submission.environment import set_offline
from submission.errors import Interrupted, SubmissionError, printable


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # vLLM logs to stdout by default (vllm/envs.py:854); stdout is each command's result alone
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    try:
        return COMMANDS[args.command](args)
    except Interrupted as exc:  # Ctrl-C in a run: what finished is written
        _error(str(exc))
        return 130
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except SubmissionError as exc:
        _error(str(exc))
        return 2
    except RecursionError:  # a JSON input nested too deeply, read outside the checked loaders
        _error("an input file is nested too deeply")
        return 2
    except OSError as exc:  # unreadable or unwritable paths given by the user
        _error(f"{exc.filename or ''}: {exc.strerror or exc}")
        return 2


def _error(message: str) -> None:
    """One line on stderr, whatever task ids or paths the message holds."""
    print(f"error: {printable(message)}", file=sys.stderr)


def entry() -> None:
    set_offline(os.environ, force=False)
    sys.exit(main())
