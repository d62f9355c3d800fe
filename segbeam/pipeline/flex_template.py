"""The Dataflow Flex Template's entry: `segbeam run`, launched from the worker image itself.

Dataflow's template launcher runs deploy/main.py in the image (FLEX_TEMPLATE_PYTHON_PY_FILE)
with every template parameter as `--name=value` (deploy/metadata.json names them) and Beam's
options (runner, project, region, sdk_container_image, dataflow_service_options, ...).
Parameter names cannot hold dashes, so `batch_size` stands for `--batch-size`, and a flag is
`mask_files=true`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import TestOptions

from segbeam.pipeline import launcher
from segbeam.pipeline import options as options_lib

_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no", "")


def run_options() -> dict[str, bool]:
  """`segbeam run`'s option strings (`--batch-size`, ...), each with whether it is a flag."""
  parser = argparse.ArgumentParser(add_help=False)
  options_lib.add_arguments(parser)
  return {option: action.nargs == 0
          for action in parser._actions  # pylint: disable=protected-access  # argparse's list
          for option in action.option_strings}


def template_argv(argv: Sequence[str]) -> list[str]:
  """Template parameters as `segbeam run` options (`--batch_size=64` -> `--batch-size=64`,
  `--mask_files=true` -> `--mask-files`, `--mask_files=false` -> nothing); Beam's options
  unchanged."""
  options = run_options()
  translated = []
  for arg in argv:
    name, has_value, value = arg.partition("=")
    option = name.replace("_", "-")
    if not name.startswith("--") or option not in options:
      translated.append(arg)
    elif not options[option]:
      translated.append(f"{option}={value}" if has_value else option)
    elif not has_value or value.lower() in _TRUE:
      translated.append(option)
    elif value.lower() not in _FALSE:
      raise ValueError(f"{name} takes true or false, got {value!r}")
  return translated


def launch(argv: Optional[Sequence[str]] = None):
  """Builds the job and hands it to Dataflow without waiting for it: a Flex Template's launcher
  ends once the job is submitted. Returns Beam's PipelineResult."""
  argv = template_argv(sys.argv[1:] if argv is None else argv)
  # Dataflow's launcher hands over its own arguments too: what Beam does not know it drops.
  _, beam_args = launcher.parse(argv, check_beam=False)
  if PipelineOptions(beam_args).get_all_options()["runner"] is None:
    beam_args.append("--runner=DataflowRunner")
  options = PipelineOptions(beam_args)
  pipeline = beam.Pipeline(options=options)
  # In the image the embedded model's path is the same for the launcher and the workers. A
  # dry run (Beam's --dry_run) builds offline, where gs:// paths cannot be checked.
  launcher.run(argv, test_pipeline=pipeline,
               check_paths=not options.view_as(TestOptions).dry_run, check_beam=False)
  return pipeline.run()
