"""``rsfm-train``: one command, a sub-command per stage.

Each stage lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``; the table
below is the only place that lists them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "mtp": ("training.mtp", "multi-task pretraining (shared encoder + seg/instance/rotated decoders)"),
    "finetune": ("training.finetune", "finetune a backbone on one downstream task"),
    "evaluate": ("training.evaluate", "evaluate a model package or checkpoint on held-back data"),
    "export": ("training.export", "turn a training checkpoint into a model package (safetensors, ONNX)"),
    "push": ("training.hub", "publish a model package to a Hugging Face Hub"),
    "chat-projector": ("training.chat_projector", "train the chat head's visual soft-token projector (and optionally a LoRA or bias/scale adapter of the LM)"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rsfm-train", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    argv = sys.argv[1:] if argv is None else argv
    wanted = argv[0] if argv and not argv[0].startswith("-") else None
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == wanted:  # import only the stage that runs: torch start-up is slow
            try:
                importlib.import_module(module).add_arguments(p)
            except ModuleNotFoundError as exc:
                if exc.name != module:
                    raise
                parser.error(f"'{name}' is not available in this version of RSFM")
    args = parser.parse_args(argv)
    return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
