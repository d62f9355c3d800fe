"""The Dataflow Flex Template's entry: `segbeam run`, launched from the worker image itself.

Dataflow's template launcher runs deploy/main.py in the image (FLEX_TEMPLATE_PYTHON_PY_FILE)
with every template parameter as `--name=value` (deploy/metadata.json names them) and Beam's
options (runner, project, region, sdk_container_image, dataflow_service_options, ...).
Parameter names cannot hold dashes, so `batch_size` stands for `--batch-size`, and a flag is
`mask_files=true`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any, Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import DebugOptions
from apache_beam.options.pipeline_options import GoogleCloudOptions
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import TestOptions
from apache_beam.options.pipeline_options import WorkerOptions

from segbeam import options as options_lib
from segbeam.commands import submit
from segbeam.run import beam_options
from segbeam.run import job

_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no", "")


def run_options() -> dict[str, bool]:
  """`segbeam run`'s option strings (`--batch-size`, ...), each with whether it is a flag."""
  return {
    option.option_string: option.type is bool
    for option in options_lib.OPTIONS
    if option.on_command_line
  }


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


def _gpu_parser() -> argparse.ArgumentParser:
  """The template's own GPU parameters (deploy/metadata.json), as `segbeam submit` has them."""
  parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  parser.add_argument("--gpu_type", choices=submit.GPU_TYPES, default=submit.GPU_L4)
  parser.add_argument("--gpu_sharing", choices=submit.GPU_SHARING, default=submit.GPU_SHARING_ONE)
  return parser


# The template's parameters that are neither segbeam run's options nor Beam's.
_GPU_FLEX = {
  "gpu_type": options_lib.Flex(
    "GPU type",
    "The GPU of each worker, one per worker: nvidia-l4 (on g2-standard-4 unless machine_type "
    "says otherwise) or nvidia-tesla-t4 (on n1-standard-4). The accelerator service option, "
    "machine type, experiments, a 50 GB disk, at most 4 workers and 4 harness threads per "
    "process are set as segbeam submit sets them, unless given at launch (default nvidia-l4). "
    "Example: nvidia-l4",
    "^(nvidia-l4|nvidia-tesla-t4)$",
  ),
  "gpu_sharing": options_lib.Flex(
    "GPU sharing",
    "one-process: one SDK process owns the GPU (default); mps: one process per vCPU sharing it "
    "through NVIDIA MPS. Example: one-process",
    "^(one-process|mps)$",
  ),
}
GPU_PARAMETERS = tuple(_GPU_FLEX)
METADATA_NAME = "segbeam: image segmentation with a U-Net"
METADATA_DESCRIPTION = (
  "Segments images with a Keras U-Net (RunInference on GPU workers) and writes per image the "
  "mask and class coverage as Parquet, errors as Parquet and a manifest. Pass "
  "sdk_container_image (this image) at launch; the GPU job's options (gpu_type, disk, workers) "
  "default as segbeam submit's, see docs/dataflow.md."
)


def _parameter(name: str, flex: options_lib.Flex, optional: bool) -> dict[str, Any]:
  return {
    "name": name,
    "label": flex.label,
    "helpText": flex.help,
    "isOptional": optional,
    "regexes": [flex.regex],
  }


def metadata() -> dict[str, Any]:
  """deploy/metadata.json: the run options the template takes (`options.OPTIONS`, those with a
  `Flex`), then its GPU parameters. Written by `python -m segbeam.commands.flex_template`."""
  parameters = [
    _parameter(
      option.option_string[2:].replace("-", "_"),
      dataclasses.replace(option.flex, help=option.flex.help.format(default=option.default)),
      not option.required,
    )
    for option in options_lib.OPTIONS
    if option.flex is not None
  ]
  parameters += [_parameter(name, flex, True) for name, flex in _GPU_FLEX.items()]
  return {"name": METADATA_NAME, "description": METADATA_DESCRIPTION, "parameters": parameters}


def metadata_json() -> str:
  return json.dumps(metadata(), indent=2, ensure_ascii=False) + "\n"


def _option_name(arg: str) -> str:
  return arg.split("=", 1)[0]


def with_gpu_defaults(beam_args: Sequence[str]) -> list[str]:
  """Beam's options completed as `segbeam submit` completes them (the GPU service option, its
  machine type, experiments, disk, worker cap, harness threads), so a job launched from the
  console, which passes none of them, is the same GPU job; what the launch gives wins."""
  gpu, beam_args = _gpu_parser().parse_known_args(list(beam_args))
  options = PipelineOptions(beam_args)
  google = options.view_as(GoogleCloudOptions)
  workers = options.view_as(WorkerOptions)
  debug = options.view_as(DebugOptions)
  dataflow = submit.DataflowOptions(
    project=google.project,
    region=google.region,
    temp_location=google.temp_location,
    image=workers.sdk_container_image,
    gpu_type=gpu.gpu_type,
    machine_type=workers.machine_type,
    max_workers=workers.max_num_workers or submit.DEFAULT_MAX_WORKERS,
    disk_size_gb=workers.disk_size_gb or submit.DEFAULT_DISK_SIZE_GB,
    gpu_sharing=gpu.gpu_sharing,
    harness_threads=debug.number_of_worker_harness_threads,
  )
  given = {_option_name(arg) for arg in beam_args}
  accelerator_given = any(
    option.startswith("worker_accelerator") for option in google.dataflow_service_options or []
  )
  experiments = set(debug.experiments or [])
  added = []
  for arg in dataflow.pipeline_args():
    name = _option_name(arg)
    if name == "--experiments":
      if arg.split("=", 1)[1] not in experiments:
        added.append(arg)
    elif name == "--dataflow_service_options":
      if not accelerator_given:
        added.append(arg)
    elif name not in given and name not in ("--dry_run", "--no_auth"):
      added.append(arg)
  return [*beam_args, *added]


def launch(argv: Optional[Sequence[str]] = None):
  """Builds the job and hands it to Dataflow without waiting for it: a Flex Template's launcher
  ends once the job is submitted. Returns Beam's PipelineResult."""
  argv = template_argv(sys.argv[1:] if argv is None else argv)
  # Dataflow's launcher hands over its own arguments too: what Beam does not know it drops,
  # so they are not checked against Beam's options.
  run_options, beam_args = options_lib.parse_args(argv)
  beam_options.check_job_labels(beam_args)
  runner = PipelineOptions(beam_args).get_all_options()["runner"]
  if runner is None:
    runner = "DataflowRunner"
    beam_args.append(f"--runner={runner}")
  if str(runner).rsplit(".", 1)[-1].lower() in ("dataflowrunner", "dataflow"):
    beam_args = with_gpu_defaults(beam_args)
    run_options = submit.for_gpu_job(run_options, argv)
    # The launcher runs in the template's image; the workers run the sdk_container_image
    # parameter, which may name another: refused when its tag names other code.
    image = PipelineOptions(beam_args).view_as(WorkerOptions).sdk_container_image
    submit.check_code(image, known_only=True)
  options = PipelineOptions(beam_args)
  pipeline = beam.Pipeline(options=options)
  # In the image the embedded model's path is the same for the launcher and the workers. A
  # dry run (Beam's --dry_run) builds offline, where gs:// paths cannot be checked.
  job.add_to(pipeline, run_options, check_paths=not options.view_as(TestOptions).dry_run)
  return pipeline.run()


if __name__ == "__main__":  # writes deploy/metadata.json's text
  sys.stdout.write(metadata_json())
