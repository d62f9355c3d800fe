"""Beam's side of the command line: the words `segbeam run` leaves to Beam, checked and parsed.

segbeam's own options are `segbeam.options`; everything else is a Beam pipeline option, which passes
through untouched, except one neither knows: Beam would drop it with a warning, and the run
go on without what was asked.
"""

from __future__ import annotations

import argparse
import difflib
from typing import Sequence

from apache_beam.options.pipeline_options import PipelineOptions

# Beam 2.77's DirectRunner first tries the Prism runner, whose binary it downloads (which fails
# offline and adds a process); for a batch job it then runs the FnApiRunner anyway. Going to the
# FnApiRunner directly is the same engine, and --runner still overrides it.
DEFAULT_LOCAL_RUNNER = "FnApiRunner"

_IN_PROCESS_RUNNERS = (
  "directrunner",
  "direct",
  "fnapirunner",
  "switchingdirectrunner",
  "bundlebaseddirectrunner",
)


def pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
  """Beam's options from `beam_args`, on `DEFAULT_LOCAL_RUNNER` unless they name a runner."""
  options = PipelineOptions(beam_args)
  if options.get_all_options()["runner"] is None:
    options = PipelineOptions([*beam_args, f"--runner={DEFAULT_LOCAL_RUNNER}"])
  return options


def runs_in_this_process(options: PipelineOptions) -> bool:
  """Whether the runner executes the pipeline's DoFns in this process (Beam's local runners,
  unless told to start worker processes), so a model loaded here is the one they use."""
  all_options = options.get_all_options()  # one full parse of every Beam option; not twice
  runner = all_options["runner"]
  name = runner if isinstance(runner, str) else type(runner).__name__
  mode = all_options.get("direct_running_mode") or "in_memory"
  return name.rsplit(".", 1)[-1].lower() in _IN_PROCESS_RUNNERS and mode != "multi_processing"


def beam_parser() -> argparse.ArgumentParser:
  """The parser Beam's PipelineOptions reads its options with: every option of every
  PipelineOptions class imported (Beam's and any the user's code defines)."""
  parsers = []
  PipelineOptions([]).get_all_options(add_extra_args_fn=parsers.append)
  return parsers[0]


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
  return [option for action in parser._actions for option in action.option_strings]


def check_beam_args(beam_args: Sequence[str], ours: Sequence[str] = ()) -> None:
  """Raises ValueError for an argument neither segbeam (`ours`: its option strings, for the
  suggestion) nor Beam knows, and for Beam's --labels given what reads as label images."""
  check_job_labels(beam_args)
  parser = beam_parser()
  _, unknown = parser.parse_known_args(list(beam_args))
  if not unknown:
    return
  word = next((w for w in unknown if w.startswith("-")), unknown[0])
  if not word.startswith("-"):
    raise ValueError(f"unexpected argument {word!r}: every value follows its --option")
  name = word.split("=", 1)[0]
  known = [
    *(o for o in ours if o.startswith("--")),
    *(o for o in option_strings(parser) if o.startswith("--")),
  ]
  close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
  raise ValueError(
    f"unknown option {name}: neither segbeam's nor a Beam pipeline option"
    + (f"; did you mean {close[0]}?" if close else "")
  )


def check_job_labels(beam_args: Sequence[str]) -> None:
  """Beam's --labels sets Dataflow job labels; before segbeam's ground truth became
  --ground-truth, `--labels 'trimaps/*.png'` meant label images, which must not pass silently
  as a job label."""
  for i, word in enumerate(beam_args):
    name, has_value, value = word.partition("=")
    if name not in ("--labels", "--label"):
      continue
    value = value if has_value else (beam_args[i + 1] if i + 1 < len(beam_args) else "")
    if "=" not in value and not value.lstrip().startswith("{"):
      raise ValueError(
        f"{name} {value!r}: {name} is Beam's, Dataflow job labels as KEY=VALUE "
        "or JSON; ground-truth label images are --ground-truth GLOB"
      )
