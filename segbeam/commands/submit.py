"""`segbeam submit`: `segbeam run` on Google Cloud Dataflow with GPU workers.

The job is the same pipeline `segbeam run` builds (`job.add_to`), put into a pipeline whose
options name the DataflowRunner, the worker image (deploy/Dockerfile), the GPU and the process
model. `--dry-run` has Beam's DataflowRunner build the whole job without submitting it or
touching Google Cloud, and prints what Dataflow would be sent.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import re
import sys
import time
from typing import Any, Optional, Sequence, TextIO

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import GoogleCloudOptions
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.dataflow.dataflow_runner import DataflowRuntimeException
from apache_beam.runners.dataflow.internal import apiclient
from apache_beam.runners.runner import PipelineResult
from apache_beam.runners.runner import PipelineState

from segbeam import constants
from segbeam import exits
from segbeam import options as options_lib
from segbeam import versions
from segbeam.commands import run as run_command
from segbeam.pipeline import elements
from segbeam.pipeline import progress
from segbeam.run import beam_options

GPU_L4 = "nvidia-l4"
GPU_T4 = "nvidia-tesla-t4"
GPU_TYPES = (GPU_L4, GPU_T4)
# Compute Engine attaches L4s only to G2 machines, and T4s only to N1 machines.
MACHINE_SERIES = {GPU_L4: "g2", GPU_T4: "n1"}
DEFAULT_MACHINE_TYPES = {GPU_L4: "g2-standard-4", GPU_T4: "n1-standard-4"}
# A G2 machine comes with a fixed number of L4s (an N1 machine takes 1, 2 or 4 T4s).
G2_GPU_COUNTS = {
  "g2-standard-4": 1,
  "g2-standard-8": 1,
  "g2-standard-12": 1,
  "g2-standard-16": 1,
  "g2-standard-24": 2,
  "g2-standard-32": 1,
  "g2-standard-48": 4,
  "g2-standard-96": 8,
}
# Runner v2 is what runs custom containers and GPUs; one SDK process per worker VM, so one
# process (one model, one CUDA context) owns the GPU. docs/dataflow.md ("GPU choice, process
# model and cost") says why.
EXPERIMENTS = ("use_runner_v2", "no_use_multiple_sdk_containers")
# How the worker's processes use its GPU: one process owns it, or (MPS) Dataflow's one process
# per vCPU share it through NVIDIA's Multi-Process Service.
GPU_SHARING_ONE = "one-process"
GPU_SHARING_MPS = "mps"
GPU_SHARING = (GPU_SHARING_ONE, GPU_SHARING_MPS)
# Defaults a first GPU job should not have to know: the image (TensorFlow and its CUDA wheels)
# does not fit Dataflow's default 25 GB boot disk beside the SDK's own, every Google GPU sample
# sets 50; a handful of workers caps the spend of a mistaken job; a few bundles per process at
# a time bound the decoded batches in host memory (Dataflow's default is 12 threads).
DEFAULT_DISK_SIZE_GB = 50
DEFAULT_MAX_WORKERS = 4
DEFAULT_HARNESS_THREADS = {GPU_SHARING_ONE: 4, GPU_SHARING_MPS: 1}
# Where deploy/Dockerfile links the embedded default model inside the worker image: a path that
# does not depend on where Python keeps its packages there (tests/deploy checks the link).
IMAGE_DEFAULT_MODEL_DIR = "/opt/segbeam/default_model"
# Where deploy/Dockerfile writes the code it installed (versions.code_tag): a submit run inside
# the image reads it there, since its tag is the image's and not known inside it.
IMAGE_CODE_FILE = "/opt/segbeam/code_tag"

# A project id, optionally scoped by its organisation's domain ('example.com:my-project').
_PROJECT_ID = re.compile(r"^(?:[a-z0-9][a-z0-9.-]*[a-z0-9]:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_REGION = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")


def _is_gcs(path: Optional[str]) -> bool:
  return bool(path) and path.startswith("gs://") and len(path) > len("gs://")


@dataclasses.dataclass(frozen=True)
class DataflowOptions:
  """Where and on what a `segbeam submit` job runs.

  Attributes:
    project: Google Cloud project id.
    region: Dataflow region, which must offer the GPU type.
    temp_location: gs:// folder for Dataflow's temporary files.
    image: the worker container image (deploy/Dockerfile), e.g. in Artifact Registry.
    staging_location: gs:// folder for the job's staged files; None for temp_location.
    gpu_type: Dataflow's name of the GPU, GPU_L4 or GPU_T4.
    gpu_count: GPUs per worker VM.
    machine_type: worker machine type; None for the GPU type's default.
    max_workers: most worker VMs.
    disk_size_gb: each worker's boot disk.
    gpu_sharing: GPU_SHARING_ONE (one SDK process owns the GPU) or GPU_SHARING_MPS.
    harness_threads: bundles each SDK process works on at once; None for the sharing mode's
      default.
    dry_run: build the job offline and describe it instead of submitting it.
    wait: after submitting, wait for the job to end and print the run's counts.
  """

  project: str
  region: str
  temp_location: str
  image: str
  staging_location: Optional[str] = None
  gpu_type: str = GPU_L4
  gpu_count: int = 1
  machine_type: Optional[str] = None
  max_workers: int = DEFAULT_MAX_WORKERS
  disk_size_gb: int = DEFAULT_DISK_SIZE_GB
  gpu_sharing: str = GPU_SHARING_ONE
  harness_threads: Optional[int] = None
  dry_run: bool = False
  wait: bool = False

  def __post_init__(self):
    if not _PROJECT_ID.match(self.project or ""):
      raise ValueError(f"--project {self.project!r} is not a Google Cloud project id")
    if not _REGION.match(self.region or ""):
      raise ValueError(f"--region {self.region!r} is not a region such as us-central1")
    for flag, location in (
      ("--temp-location", self.temp_location),
      ("--staging-location", self.staging_location),
    ):
      if location is not None and not _is_gcs(location):
        raise ValueError(f"{flag} must be a gs:// folder, got {location!r}")
    if not self.image:
      raise ValueError("--image: the worker container image is required (deploy/Dockerfile)")
    if self.gpu_type not in GPU_TYPES:
      raise ValueError(f"--gpu-type must be one of {', '.join(GPU_TYPES)}, got {self.gpu_type!r}")
    if self.gpu_count < 1:
      raise ValueError(f"--gpu-count must be at least 1, got {self.gpu_count}")
    if self.gpu_count > 1:
      raise ValueError(
        f"--gpu-count {self.gpu_count}: a segbeam worker's processes use one GPU, so "
        f"{self.gpu_count - 1} of each worker's would idle while billed; use one GPU per "
        "worker and more workers (--max-workers)"
      )
    if self.max_workers < 1:
      raise ValueError(f"--max-workers must be at least 1, got {self.max_workers}")
    if self.disk_size_gb < DEFAULT_DISK_SIZE_GB:
      raise ValueError(
        f"--disk-size-gb {self.disk_size_gb}: the worker image needs at least "
        f"{DEFAULT_DISK_SIZE_GB} GB"
      )
    if self.gpu_sharing not in GPU_SHARING:
      raise ValueError(
        f"--gpu-sharing must be one of {', '.join(GPU_SHARING)}, got {self.gpu_sharing!r}"
      )
    if self.harness_threads is not None and self.harness_threads < 1:
      raise ValueError(f"--harness-threads must be at least 1, got {self.harness_threads}")
    machine = self.worker_machine_type
    series = MACHINE_SERIES[self.gpu_type]
    if not machine.startswith(series + "-"):
      raise ValueError(f"{self.gpu_type} runs on {series} machines only, not {machine}")
    if self.gpu_type == GPU_L4 and G2_GPU_COUNTS.get(machine, 1) != 1:
      single = ", ".join(m for m, count in G2_GPU_COUNTS.items() if count == 1)
      raise ValueError(
        f"{machine} comes with {G2_GPU_COUNTS[machine]} L4 GPUs and a segbeam "
        f"worker uses one; choose a G2 machine with one: {single}"
      )

  @property
  def worker_machine_type(self) -> str:
    return self.machine_type or DEFAULT_MACHINE_TYPES[self.gpu_type]

  @property
  def threads_per_process(self) -> int:
    return self.harness_threads or DEFAULT_HARNESS_THREADS[self.gpu_sharing]

  @property
  def accelerator_service_option(self) -> str:
    """Dataflow's service option that attaches the GPUs and installs their driver."""
    mps = ";use_nvidia_mps" if self.gpu_sharing == GPU_SHARING_MPS else ""
    return (
      f"worker_accelerator=type:{self.gpu_type};count:{self.gpu_count};install-nvidia-driver{mps}"
    )

  @property
  def experiments(self) -> tuple[str, ...]:
    if self.gpu_sharing == GPU_SHARING_MPS:  # one process per vCPU, sharing the GPU
      return tuple(e for e in EXPERIMENTS if e != "no_use_multiple_sdk_containers")
    return EXPERIMENTS

  def pipeline_args(self) -> list[str]:
    """Beam pipeline options for this job."""
    args = [
      "--runner=DataflowRunner",
      f"--project={self.project}",
      f"--region={self.region}",
      f"--sdk_container_image={self.image}",
      # The image holds the SDK: nothing to stage (Beam 2.77 also reads it as 'default').
      "--sdk_location=container",
      f"--machine_type={self.worker_machine_type}",
      f"--dataflow_service_options={self.accelerator_service_option}",
      *(f"--experiments={experiment}" for experiment in self.experiments),
      f"--max_num_workers={self.max_workers}",
      f"--disk_size_gb={self.disk_size_gb}",
      f"--number_of_worker_harness_threads={self.threads_per_process}",
    ]
    # A Flex Template launch may give none: Dataflow then takes the staging location's.
    if self.temp_location:
      args.append(f"--temp_location={self.temp_location}")
    if self.staging_location:
      args.append(f"--staging_location={self.staging_location}")
    if self.dry_run:
      args += ["--dry_run=True", "--no_auth"]
    return args


def add_dataflow_arguments(parser: argparse.ArgumentParser) -> None:
  # Beam's spelling of each option is accepted too, so it is never passed to Beam twice.
  parser.add_argument("--project", required=True, help="Google Cloud project id")
  parser.add_argument(
    "--region",
    default="us-central1",
    help="Dataflow region with the GPU type (default: %(default)s)",
  )
  parser.add_argument(
    "--temp-location",
    "--temp_location",
    dest="temp_location",
    required=True,
    help="gs:// folder for Dataflow's temporary files",
  )
  parser.add_argument(
    "--staging-location",
    "--staging_location",
    dest="staging_location",
    default=None,
    help="gs:// folder for staged files (default: temp location)",
  )
  parser.add_argument(
    "--image",
    "--sdk_container_image",
    dest="image",
    required=True,
    help="worker container image built from deploy/Dockerfile",
  )
  parser.add_argument(
    "--gpu-type",
    choices=GPU_TYPES,
    default=GPU_L4,
    help="GPU per worker (default: %(default)s; L4 on g2, T4 on n1 machines)",
  )
  parser.add_argument(
    "--gpu-count", type=int, default=1, help="GPUs per worker: 1 (a worker's processes use one GPU)"
  )
  parser.add_argument(
    "--machine-type",
    "--machine_type",
    dest="machine_type",
    default=None,
    help="worker machine type (default: g2-standard-4 for L4, n1-standard-4 for T4)",
  )
  parser.add_argument(
    "--max-workers",
    "--max_num_workers",
    dest="max_workers",
    type=int,
    default=DEFAULT_MAX_WORKERS,
    help="most worker VMs, which caps the spend rate (default: %(default)s)",
  )
  parser.add_argument(
    "--disk-size-gb",
    "--disk_size_gb",
    dest="disk_size_gb",
    type=int,
    default=DEFAULT_DISK_SIZE_GB,
    help="each worker's boot disk, at least the default: the image holds "
    "TensorFlow and CUDA (default: %(default)s)",
  )
  parser.add_argument(
    "--gpu-sharing",
    choices=GPU_SHARING,
    default=GPU_SHARING_ONE,
    help="one-process: one SDK process owns the GPU (default); mps: one "
    "process per vCPU sharing it through NVIDIA MPS",
  )
  parser.add_argument(
    "--harness-threads",
    "--number_of_worker_harness_threads",
    dest="harness_threads",
    type=int,
    default=None,
    help="bundles each SDK process works on at once, which bounds the "
    "decoded batches in memory (default: 4 with one-process, 1 with mps)",
  )
  parser.add_argument(
    "--dry-run",
    action="store_true",
    help="build the Dataflow job offline and print it; submit nothing",
  )
  parser.add_argument(
    "--wait", action="store_true", help="wait for the job to end, then print its counts"
  )


DESCRIPTION = (
  "Run `segbeam run` on Google Cloud Dataflow with GPU workers. Options not listed here are "
  "Beam pipeline options (--job_name, --num_workers, --network, ...); the ones segbeam submit "
  "sets itself win."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """`segbeam submit`'s arguments: Dataflow's, then `segbeam run`'s."""
  add_dataflow_arguments(parser.add_argument_group("Dataflow"))
  options_lib.add_arguments(parser.add_argument_group("segbeam run"))


def for_gpu_job(options: options_lib.RunOptions, argv: Sequence[str]) -> options_lib.RunOptions:
  """A run on GPU workers (`segbeam submit`, the Flex Template): a GPU required, and
  `constants.GPU_JOB_HANDLER` unless `argv` names a handler."""
  handler = (
    options.handler if options_lib.given(argv, "--inference-handler") else constants.GPU_JOB_HANDLER
  )
  return dataclasses.replace(options, require_gpu=True, handler=handler)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="segbeam submit", allow_abbrev=False, description=DESCRIPTION
  )
  add_arguments(parser)
  return parser


def dataflow_options_from_args(args: argparse.Namespace) -> DataflowOptions:
  return DataflowOptions(
    project=args.project,
    region=args.region,
    temp_location=args.temp_location,
    staging_location=args.staging_location,
    image=args.image,
    gpu_type=args.gpu_type,
    gpu_count=args.gpu_count,
    machine_type=args.machine_type,
    max_workers=args.max_workers,
    disk_size_gb=args.disk_size_gb,
    gpu_sharing=args.gpu_sharing,
    harness_threads=args.harness_threads,
    dry_run=args.dry_run,
    wait=args.wait,
  )


def _check_cloud_paths(run_options: options_lib.RunOptions) -> None:
  """Dataflow workers read and write Cloud Storage, never this machine's disk."""
  for flag, path in (
    ("--input", run_options.input),
    ("--output", run_options.output),
    ("--ground-truth", run_options.ground_truth),
    ("--model", run_options.model_dir),
  ):
    if path is not None and not _is_gcs(path):
      extra = " (or leave --model out for the image's embedded model)" if flag == "--model" else ""
      raise ValueError(f"{flag} must be a gs:// path on Dataflow, got {path!r}{extra}")


def local_versions() -> dict[str, str]:
  """Python (major.minor), Beam and TensorFlow as this process has them."""
  return {
    "Python": f"{sys.version_info.major}.{sys.version_info.minor}",
    "Beam": beam.__version__,
    "TensorFlow": importlib.metadata.version("tensorflow"),
  }


def image_versions() -> dict[str, str]:
  return {
    "Python": versions.PYTHON_VERSION,
    "Beam": versions.BEAM_VERSION,
    "TensorFlow": versions.TENSORFLOW_VERSION,
  }


def _submit_from_the_image(image: str) -> str:
  """The command that submits from the image itself, whose packages are the workers'."""
  return (
    f"docker run --rm --entrypoint segbeam -v ~/.config/gcloud:/root/.config/gcloud {image} "
    "submit ... (or launch the Flex Template; docs/dataflow.md)"
  )


def _code_in_this_image() -> Optional[str]:
  """The code the image this runs in was built with (IMAGE_CODE_FILE), or None outside one."""
  try:
    with open(IMAGE_CODE_FILE, encoding="utf-8") as f:
      return f.read().strip()
  except OSError:
    return None


def check_code(image: str, *, known_only: bool = False) -> None:
  """Raises ValueError unless the workers' segbeam is this one: `image`'s tag names this code
  (versions.code_tag: the .py files and the default model, whose metadata the job carries), or,
  with a tag that names none, this runs inside an image built from this code (a submit from the
  image, which then trusts `image` to be that image). With `known_only` (the Flex Template's
  launcher, which runs in the image) only a tag that names other code is refused."""
  here = versions.code_tag()
  named = versions.image_code_tag(image)
  if named == here:
    return
  if named is not None:
    raise ValueError(
      f"this segbeam ({here}) is not the image's ({named}, as its tag says): the workers would "
      "unpickle the job with other code, and load another default model than the one whose "
      f"metadata the job records; submit from the image itself: {_submit_from_the_image(image)}"
    )
  if known_only or _code_in_this_image() == here:
    return
  raise ValueError(
    f"--image {image}: its tag does not name the segbeam code it holds, so it cannot be checked "
    f"against this segbeam ({here}); tag the image built from this checkout :{here} "
    "(`python3 -m segbeam.versions` prints it; docs/dataflow.md), or submit from the image "
    f"itself: {_submit_from_the_image(image)}"
  )


def check_versions(image: str) -> None:
  """Raises ValueError when this machine's Python, Beam or TensorFlow differ from the worker
  image's: the job is pickled here and unpickled there, and Dataflow fails it soon after it is
  submitted (and billed)."""
  local, pinned = local_versions(), image_versions()
  differ = [
    f"{name} {local[name]} here, {pinned[name]} in the image"
    for name in pinned
    if local[name] != pinned[name]
  ]
  if differ:
    raise ValueError(
      f"this machine's versions differ from the worker image's ({'; '.join(differ)}), and a "
      f"job submitted so fails on Dataflow; submit from the image itself: "
      f"{_submit_from_the_image(image)}"
    )


def submit(argv: Sequence[str]) -> PipelineResult:
  """Builds the job and submits it, or with --dry-run only builds it. Returns Beam's
  PipelineResult; after a dry run its `job` is the job Dataflow would have been sent."""
  parser = build_parser()
  args, beam_args = parser.parse_known_args(list(argv))
  return _submit(parser, args, beam_args, argv)


def _submit(
  parser: argparse.ArgumentParser,
  args: argparse.Namespace,
  beam_args: list[str],
  argv: Sequence[str],
) -> PipelineResult:
  """`submit` with its command line parsed by `parser` into `args` and Beam's `beam_args`."""
  # Loads TensorFlow: not imported with the module, which `segbeam --help` imports.
  from segbeam.run import job  # noqa: PLC0415

  dataflow = dataflow_options_from_args(args)
  check_versions(dataflow.image)
  run_options = for_gpu_job(options_lib.from_args(args), argv)
  _check_cloud_paths(run_options)
  options_lib.check_patterns_given_once(argv)
  beam_options.check_beam_args(beam_args, beam_options.option_strings(parser))
  # Before anything touches Cloud Storage (the model's metadata, the output's claim).
  check_code(dataflow.image)
  pipeline = beam.Pipeline(options=PipelineOptions([*beam_args, *dataflow.pipeline_args()]))
  job.add_to(
    pipeline,
    run_options,
    check_paths=not dataflow.dry_run,
    worker_model_dir=None if args.model_dir else IMAGE_DEFAULT_MODEL_DIR,
  )
  return pipeline.run()


def describe_job(job) -> dict[str, Any]:
  """What Dataflow would be sent for `job` (a dry run's `result.job`): the worker environment
  as Beam's Dataflow client builds it at submission, and the pipeline's transforms."""
  google = job.options.view_as(GoogleCloudOptions)
  environment = apiclient.Environment(
    packages=[],
    options=job.options,
    # The client's own value (a module constant Beam keeps private); '8' in Beam 2.77.
    environment_version=getattr(apiclient, "_FNAPI_ENVIRONMENT_MAJOR_VERSION", "8"),
    proto_pipeline_staged_url=FileSystems.join(google.staging_location, "pipeline.pb"),
    proto_pipeline=job.proto_pipeline,
  ).proto
  pool = environment.worker_pools[0]
  transforms = sorted(
    transform.unique_name for transform in job.proto_pipeline.components.transforms.values()
  )
  return {
    "job_name": job.proto.name,
    "project": google.project,
    "region": google.region,
    "temp_location": google.temp_location,
    # Whose credentials the workers read and write with (None: Compute Engine's default
    # service account); docs/dataflow.md lists the roles it needs.
    "service_account_email": google.service_account_email,
    "worker_image": pool.worker_harness_container_image,
    "machine_type": pool.machine_type,
    "max_workers": pool.autoscaling_settings.max_num_workers or None,
    "disk_size_gb": pool.disk_size_gb or None,
    "harness_threads_per_process": pool.num_threads_per_worker or None,
    "labels": dict(job.proto.labels),  # Dataflow job labels (Beam's --label, --labels)
    "service_options": list(environment.service_options),
    "experiments": sorted(environment.experiments),
    "transforms": len(transforms),
    "run_inference": [name for name in transforms if name.endswith("/RunInference")],
  }


# How often `--wait` prints the job's progress.
WAIT_REPORT_SECONDS = 30.0


def job_counts(result: PipelineResult) -> dict[str, int]:
  """The job's segbeam counters so far (committed, else attempted, as the service has them)."""
  counts: dict[str, int] = {}
  query = result.metrics().query(MetricsFilter().with_namespace(constants.METRICS_NAMESPACE))
  for metric in query["counters"]:
    value = metric.committed if metric.committed is not None else metric.attempted
    counts[metric.key.metric.name] = counts.get(metric.key.metric.name, 0) + (value or 0)
  return counts


def wait_printing_progress(
  result: PipelineResult,
  *,
  every: float = WAIT_REPORT_SECONDS,
  stream: TextIO = sys.stderr,
  clock=time.monotonic,
) -> str:
  """Waits for the job to end, printing its progress (`progress.Figures` from its counters)
  every `every` seconds; returns its final state."""
  rate = progress.Rate()
  while True:
    state = result.wait_until_finish(duration=int(every * 1000))
    if PipelineState.is_terminal(state):
      return state
    try:
      figures = progress.Figures.from_counts(job_counts(result))
    except Exception:  # metrics not there yet, or the service did not answer: next time
      continue
    figures = rate.update(clock(), figures)
    print(f"job {state.lower()}: {figures.line()}", file=stream, flush=True)


# A Python exception's line in a traceback: 'module.Name: message' (or the name alone).
_EXCEPTION_LINE = re.compile(
  r"^(?:[A-Za-z_]\w*\.)*([A-Z]\w*(?:Error|Exception|Exit|Interrupt))(:.*)?$"
)


def job_error_line(error: Optional[str]) -> str:
  """One line that says why a Dataflow job failed, from the error Beam's DataflowRunner passes
  on (the job's most telling error message: a worker's traceback where there is one): the
  breaker's ModelFailureError line, else the traceback's last exception line, else the
  message's first line."""
  model_failure = elements.MODEL_FAILURE_LINE.search(error or "")
  if model_failure:
    return f"{elements.ModelFailureError.__name__}: {model_failure.group(1).strip()}"
  lines = [line.strip() for line in (error or "").splitlines()]
  exceptions = [m for m in map(_EXCEPTION_LINE.match, lines) if m]
  if exceptions:
    return exceptions[-1].group(1) + (exceptions[-1].group(2) or "")
  first = next((line for line in lines if line and line != "None"), None)
  return first or "no error message from Dataflow"


def _failure(error: DataflowRuntimeException) -> tuple[str, str]:
  """(the job's final state, its error line) from Beam's DataflowRuntimeException, whose
  message is 'Dataflow pipeline failed. State: STATE, Error:' and the error on the lines below."""
  header, _, body = str(error).partition("\n")
  state = re.search(r"State: (\w+)", header)
  return (state.group(1) if state else "FAILED"), job_error_line(body)


def console_url(project: str, region: str, job_id: str) -> str:
  return f"https://console.cloud.google.com/dataflow/jobs/{region}/{job_id}?project={project}"


def _command(args: argparse.Namespace) -> int:
  """`segbeam submit` as `segbeam.cli` parsed it; a bad invocation raises, for the cli to say."""
  result = _submit(build_parser(), args, args.beam_args, args.argv)
  if args.dry_run:
    print(json.dumps(describe_job(result.job), indent=2))
    return 0
  job_id = result.job_id()
  print(
    f"submitted Dataflow job {job_id}\n  {console_url(args.project, args.region, job_id)}\n"
    f"  gcloud dataflow jobs describe {job_id} --region {args.region}\n"
    f"output: {args.output.rstrip('/')}/ (manifest.json is written last)"
  )
  if not args.wait:
    return 0
  try:
    state = wait_printing_progress(result)
  except KeyboardInterrupt:  # Ctrl-C stops the waiting, not the job: say how to stop that
    return exits.stopped(
      "submit",
      f"stopped waiting; job {job_id} is still running on Dataflow (stop it with: gcloud "
      f"dataflow jobs cancel {job_id} --region {args.region})",
      exits.INTERRUPTED,
    )
  except DataflowRuntimeException as error:  # Beam raises it for a job that did not succeed
    state, line = _failure(error)
    return exits.stopped(
      "submit",
      f"Dataflow job {job_id} ended {state}: {line} (its errors: gcloud dataflow logs list "
      f"{job_id} --region {args.region} --importance error; its page: "
      f"{console_url(args.project, args.region, job_id)})",
      exits.FAILED,
    )
  print(f"job {job_id} ended: {state}")
  if state != PipelineState.DONE:
    return exits.FAILED
  run_command.print_report(args.output.rstrip("/"))
  return 0


def add_parser(subparsers) -> None:
  """Registers `segbeam submit`; options it does not know go to Beam."""
  parser = subparsers.add_parser(
    "submit",
    allow_abbrev=False,
    help="segbeam run on Google Cloud Dataflow with GPU workers: --project, --temp-location, "
    "--image, gs:// --input and --output [--dry-run]; see segbeam submit --help",
    description=DESCRIPTION,
  )
  add_arguments(parser)
  parser.set_defaults(func=_command, takes_beam_args=True)
