"""The `segbeam` command: assembles the subcommands of the model and pipeline sides."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

# TensorFlow's C++ start-up chatter is noise in a command-line tool.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from segbeam.model import commands as model_commands  # pylint: disable=wrong-import-position
from segbeam.pipeline import pack  # pylint: disable=wrong-import-position


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="segbeam", description="Batch image segmentation with a Keras U-Net on Apache Beam.")
  subparsers = parser.add_subparsers(dest="command", required=True)
  # `run` parses its own arguments and hands the rest to Beam; listed here for --help only.
  subparsers.add_parser("run", add_help=False,
                        help="segment images: segbeam run --input GLOB --output DIR [--model DIR] "
                        "[Beam options]; see segbeam run --help")
  model_commands.add_parsers(subparsers)
  pack.add_parser(subparsers)
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0] == "run":
    from segbeam.pipeline import launcher
    return launcher.main(argv[1:])
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    return args.func(args)
  except (FileNotFoundError, ValueError) as error:
    print(f"segbeam {args.command}: {error}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
