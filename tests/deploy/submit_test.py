"""`segbeam submit`: the Dataflow job, built offline by Beam's DataflowRunner in dry-run mode."""

import io
import json

import pytest
from apache_beam.internal import pickler
from apache_beam.options.pipeline_options import DebugOptions
from apache_beam.options.pipeline_options import GoogleCloudOptions
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.options.pipeline_options import WorkerOptions
from apache_beam.portability.api import beam_runner_api_pb2

from segbeam import cli
from segbeam import constants
from segbeam import options as options_lib
from segbeam import versions
from segbeam.commands import submit

# Tagged as docs/dataflow.md tags the image: with the code of this checkout.
IMAGE = f"us-central1-docker.pkg.dev/my-project-123/segbeam/worker:{versions.code_tag()}"
# Nothing here reaches Google Cloud: the dry run checks no path and contacts no service.
CLOUD = ["--project", "my-project-123", "--temp-location", "gs://my-bucket/tmp", "--image", IMAGE]
RUN = ["--input", "gs://my-bucket/photos/**/*.jpg", "--output", "gs://my-bucket/runs/x"]


def _manifest_base(proto_pipeline):
  """What the job's manifest will record, read from the WriteManifest DoFn pickled into it."""
  for transform in proto_pipeline.components.transforms.values():
    if transform.unique_name == "Write/WriteManifest":
      payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
      do_fn = pickler.loads(payload.do_fn.payload)[0]
      return do_fn._base
  raise AssertionError("no Write/WriteManifest in the job")


def _container_images(proto_pipeline):
  return {
    beam_runner_api_pb2.DockerPayload.FromString(env.payload).container_image
    for env in proto_pipeline.components.environments.values()
  }


def test_dry_run_builds_the_gpu_job_with_run_inference():
  result = submit.submit(["--dry-run", *CLOUD, *RUN, "--batch-size", "64", "--max-workers", "8"])
  job = result.job
  options = job.options
  assert options.view_as(StandardOptions).runner == "DataflowRunner"
  google = options.view_as(GoogleCloudOptions)
  assert google.project == "my-project-123" and google.region == "us-central1"
  assert google.dataflow_service_options == [
    "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
  ]
  workers = options.view_as(WorkerOptions)
  assert workers.sdk_container_image == IMAGE
  assert workers.machine_type == "g2-standard-4" and workers.max_num_workers == 8
  experiments = options.view_as(DebugOptions).experiments
  assert "use_runner_v2" in experiments and "no_use_multiple_sdk_containers" in experiments
  # The pipeline Dataflow would run: segbeam's, on the image, with RunInference in it.
  names = {t.unique_name for t in job.proto_pipeline.components.transforms.values()}
  assert "Segment/RunInference" in names
  assert {"Read", "Write/WriteSegments", "Write/WriteManifest"} <= names
  assert _container_images(job.proto_pipeline) == {IMAGE}
  # segbeam's options travel in the job; without --model the workers load the image's copy
  # of the embedded model, whose metadata was read here.
  manifest = _manifest_base(job.proto_pipeline)
  assert manifest["options"]["batch_size"] == 64
  assert manifest["options"]["require_gpu"]  # the workers fail fast without a GPU
  assert manifest["options"]["handler"] == constants.GPU_JOB_HANDLER  # none was named
  assert manifest["output"] == "gs://my-bucket/runs/x"
  assert manifest["model"]["path"] == submit.IMAGE_DEFAULT_MODEL_DIR
  assert manifest["model"]["class_names"] == ["pet", "background", "border"]

  # What the Dataflow client would send: worker pool, service options, experiments.
  described = submit.describe_job(job)
  assert described["worker_image"] == IMAGE and described["machine_type"] == "g2-standard-4"
  assert described["max_workers"] == 8
  assert described["service_options"] == google.dataflow_service_options
  assert {"use_runner_v2", "no_use_multiple_sdk_containers"} <= set(described["experiments"])
  assert "use_multiple_sdk_containers" not in described["experiments"]
  assert described["run_inference"] == ["Segment/RunInference"]


def test_cli_dry_run_with_t4_and_beam_options(capsys):
  code = cli.main(
    [
      "submit",
      "--dry-run",
      *CLOUD,
      *RUN,
      "--gpu-type",
      "nvidia-tesla-t4",
      "--region",
      "europe-west4",
      "--job_name",
      "segbeam-pets",
    ]
  )
  assert code == 0
  described = json.loads(capsys.readouterr().out)
  assert described["job_name"] == "segbeam-pets"  # a Beam option passed through
  assert described["region"] == "europe-west4"
  assert described["machine_type"] == "n1-standard-4"
  assert described["service_options"] == [
    "worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver"
  ]


@pytest.mark.parametrize(
  "change,words",
  [
    (["--gpu-type", "nvidia-l4", "--machine-type", "n1-standard-8"], "g2 machines only"),
    (["--gpu-type", "nvidia-tesla-t4", "--machine-type", "g2-standard-8"], "n1 machines only"),
    (["--gpu-count", "2"], "1 of each worker's would idle while billed"),
    (["--gpu-type", "nvidia-tesla-t4", "--gpu-count", "4"], "3 of each worker's would idle"),
    (["--machine-type", "g2-standard-24"], "comes with 2 L4 GPUs and a segbeam worker uses one"),
    (["--disk-size-gb", "25"], "needs at least 50 GB"),
    (["--max-workers", "0"], "--max-workers must be at least 1"),
    (["--temp-location", "/tmp/beam"], "--temp-location must be a gs://"),
    (["--project", "My Project"], "not a Google Cloud project id"),
    (["--input", "photos/*.jpg"], "--input must be a gs://"),
    (["--model", "runs/export"], "leave --model out"),
  ],
)
def test_bad_invocations_exit_2_with_one_line(change, words, capsys):
  # A later option replaces an earlier one.
  assert cli.main(["submit", "--dry-run", *CLOUD, *RUN, *change]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("segbeam submit:") and words in err and len(err.splitlines()) == 1


class _JobStillRunning:
  """What `submit` returns for a launched job (launching needs Google Cloud), interrupted by
  Ctrl-C while `--wait` waits for it."""

  def job_id(self) -> str:
    return "2026-11-29_04_05_06-123"

  def wait_until_finish(self, duration=None):
    raise KeyboardInterrupt


def test_ctrl_c_while_waiting_says_the_job_runs_on_and_how_to_cancel_it(monkeypatch, capsys):
  monkeypatch.setattr(submit, "_submit", lambda parser, args, beam_args, argv: _JobStillRunning())
  assert cli.main(["submit", "--wait", *CLOUD, *RUN, "--region", "europe-west4"]) == 130
  captured = capsys.readouterr()
  assert "submitted Dataflow job 2026-11-29_04_05_06-123" in captured.out
  assert captured.err == (
    "segbeam submit: stopped waiting; job 2026-11-29_04_05_06-123 is still running on "
    "Dataflow (stop it with: gcloud dataflow jobs cancel 2026-11-29_04_05_06-123 --region "
    "europe-west4)\n"
  )


class _RunningJob:
  """A launched job as Beam's DataflowPipelineResult shows it to `--wait`: running for two
  polls, its segbeam counters growing (as the service aggregates them), then done."""

  def __init__(self):
    self.polls = []
    self._states = iter(["RUNNING", "RUNNING", "DONE"])
    self._counts = iter(
      [
        {"inputs_seen": 600, "segmented": 400, "failed_validate": 2},
        {"inputs_seen": 1300, "segmented": 1000, "failed_read": 1, "failed_validate": 5},
      ]
    )

  def wait_until_finish(self, duration=None):
    self.polls.append(duration)
    return next(self._states)

  def metrics(self):
    from apache_beam.metrics.execution import MetricKey
    from apache_beam.metrics.execution import MetricResult
    from apache_beam.metrics.metricbase import MetricName

    counts = next(self._counts)

    class _Metrics:
      def query(self, metrics_filter):
        assert metrics_filter.namespaces == {"segbeam"}
        return {
          "counters": [
            # Dataflow reports a counter per step; a running job's committed may be missing.
            MetricResult(MetricKey("Read", MetricName("segbeam", name)), None, value)
            for name, value in counts.items()
          ],
          "distributions": [],
          "gauges": [],
        }

    return _Metrics()


def test_wait_prints_the_jobs_progress_from_its_counters():
  running, out = _RunningJob(), io.StringIO()
  clock = iter([100.0, 130.0])
  state = submit.wait_printing_progress(running, every=30, stream=out, clock=lambda: next(clock))
  assert state == "DONE" and running.polls == [30000, 30000, 30000]
  assert out.getvalue().splitlines() == [
    "job running: 402 images done of 600 read so far (the total is counted as they are read), "
    "2 failed",
    "job running: 1,006 images done of 1,300 read so far (the total is counted as they are "
    "read), 6 failed, 20.1 img/s",
  ]


@pytest.mark.parametrize(
  "name,local", [("Python", "3.12"), ("Beam", "2.76.0"), ("TensorFlow", "2.20.0")]
)
def test_submit_refuses_versions_other_than_the_images(name, local, monkeypatch, capsys):
  here = dict(submit.image_versions(), **{name: local})
  monkeypatch.setattr(submit, "local_versions", lambda: here)
  assert cli.main(["submit", "--dry-run", *CLOUD, *RUN]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1
  assert f"({name} {local} here, {submit.image_versions()[name]} in the image)" in err
  assert f"--entrypoint segbeam -v ~/.config/gcloud:/root/.config/gcloud {IMAGE} submit" in err


def test_this_machine_has_the_images_versions():
  """CI submits dry runs from the versions the image pins: the check above passes here."""
  assert submit.local_versions() == submit.image_versions()


def test_a_gpu_job_gets_safe_defaults_shown_in_the_dry_run(capsys):
  assert cli.main(["submit", "--dry-run", *CLOUD, *RUN]) == 0
  job = json.loads(capsys.readouterr().out)
  assert job["disk_size_gb"] == 50 and job["max_workers"] == 4
  assert job["harness_threads_per_process"] == 4
  assert job["service_options"] == [
    "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
  ]
  assert "no_use_multiple_sdk_containers" in job["experiments"]


def test_mps_is_opted_into_and_overrides_are_kept(capsys):
  assert (
    cli.main(
      [
        "submit",
        "--dry-run",
        *CLOUD,
        *RUN,
        "--gpu-sharing",
        "mps",
        "--max-workers",
        "20",
        "--disk-size-gb",
        "100",
      ]
    )
    == 0
  )
  job = json.loads(capsys.readouterr().out)
  assert job["service_options"] == [
    "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver;use_nvidia_mps"
  ]
  assert "no_use_multiple_sdk_containers" not in job["experiments"]
  assert job["harness_threads_per_process"] == 1
  assert (job["max_workers"], job["disk_size_gb"]) == (20, 100)


def test_a_domain_scoped_project_id_is_accepted(capsys):
  cloud = ["--project", "example.com:my-project", *CLOUD[2:]]
  assert cli.main(["submit", "--dry-run", *cloud, *RUN]) == 0
  assert json.loads(capsys.readouterr().out)["project"] == "example.com:my-project"


OTHER_CODE = "segbeam-0.2.0-0123456789abcdef"


@pytest.mark.parametrize(
  "image,words",
  [
    # Built from another checkout: its workers would unpickle this one's job.
    (f"r-docker.pkg.dev/p/segbeam/worker:{OTHER_CODE}", f"is not the image's ({OTHER_CODE}"),
    (f"worker:2026-11-22-{OTHER_CODE}", f"is not the image's ({OTHER_CODE}"),
    # Tags that say nothing of the code: nothing to compare, so nothing is submitted.
    ("r-docker.pkg.dev/p/segbeam/worker:latest", "its tag does not name the segbeam code"),
    ("worker@sha256:" + "a" * 64, "its tag does not name the segbeam code"),
  ],
)
def test_submit_refuses_an_image_of_other_or_unknown_code(image, words, capsys):
  cloud = [*CLOUD[:-1], image]
  assert cli.main(["submit", "--dry-run", *cloud, *RUN]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("segbeam submit: "), err
  assert words in err and versions.code_tag() in err
  # The way out: submit from the image itself.
  assert (
    f"docker run --rm --entrypoint segbeam -v ~/.config/gcloud:/root/.config/gcloud {image} submit"
    in err
  )


def test_inside_the_image_its_own_code_is_submitted_whatever_its_tag(tmp_path, monkeypatch, capsys):
  """`docker run ... $IMAGE submit --image $IMAGE ...`: the build wrote the code it installed
  to IMAGE_CODE_FILE, and it is the code submitting."""
  marker = tmp_path / "code_tag"
  monkeypatch.setattr(submit, "IMAGE_CODE_FILE", str(marker))
  cloud = [*CLOUD[:-1], "r-docker.pkg.dev/p/segbeam/worker:latest"]
  assert cli.main(["submit", "--dry-run", *cloud, *RUN]) == 2  # not in an image
  capsys.readouterr()
  marker.write_text(versions.code_tag() + "\n")
  assert cli.main(["submit", "--dry-run", *cloud, *RUN]) == 0
  capsys.readouterr()
  marker.write_text(OTHER_CODE + "\n")  # an image whose package was changed after the build
  assert cli.main(["submit", "--dry-run", *cloud, *RUN]) == 2
  # A tag naming other code is refused inside an image too.
  marker.write_text(versions.code_tag() + "\n")
  assert cli.main(["submit", "--dry-run", *CLOUD[:-1], f"w:{OTHER_CODE}", *RUN]) == 2


def test_the_dry_run_shows_the_worker_service_account(capsys):
  account = "segbeam-worker@my-project-123.iam.gserviceaccount.com"
  assert cli.main(["submit", "--dry-run", *CLOUD, *RUN, "--service_account_email", account]) == 0
  assert json.loads(capsys.readouterr().out)["service_account_email"] == account
  assert cli.main(["submit", "--dry-run", *CLOUD, *RUN]) == 0
  # None: Dataflow's default, the project's Compute Engine default service account.
  assert json.loads(capsys.readouterr().out)["service_account_email"] is None


def _breaker_traceback() -> tuple[str, str]:
  """(a worker's traceback of the breaker stopping the run, its ModelFailureError line): raised
  by the real breaker, then re-raised as Beam's SDK harness reports a failed bundle."""
  import traceback

  from segbeam.pipeline import inference

  breaker = inference._Breaker(options_lib.BreakerLimits(batches=1), batch_size=8)
  failure = inference.InferenceFailure(
    "infer", "InternalError", "Failed to call ThenRnnForward: cuDNN launch failure"
  )
  try:
    try:
      breaker.record([(f"k{i}", failure) for i in range(8)])
    except Exception as error:
      raise RuntimeError("while running 'Segment/RunInference'") from error
  except Exception as error:
    text = "".join(traceback.format_exception(error))
  line = next(x for x in text.splitlines() if "ModelFailureError: " in x)
  return "Error message from worker: " + text, line[line.index("ModelFailureError: ") :]


# What Dataflow reports for a job whose workers failed a work item 4 times, as Beam's
# DataflowRunner passes it on: its most telling error message, a worker's traceback.
WORKER_TRACEBACK, MODEL_FAILURE_LINE = _breaker_traceback()


class _FailedJob:
  """A launched job that fails while `--wait` waits, as Beam's DataflowPipelineResult shows it:
  wait_until_finish raises Beam's DataflowRuntimeException with the job's error."""

  def __init__(self, state, error):
    self.state, self.error = state, error

  def job_id(self) -> str:
    return "2026-12-07_01_02_03-456"

  def wait_until_finish(self, duration=None):
    from apache_beam.runners.dataflow.dataflow_runner import DataflowRuntimeException

    raise DataflowRuntimeException(
      "Dataflow pipeline failed. State: %s, Error:\n%s" % (self.state, self.error), self
    )


@pytest.mark.parametrize(
  "state,error,line",
  [
    (
      "FAILED",
      WORKER_TRACEBACK,
      MODEL_FAILURE_LINE,
    ),
    (
      "FAILED",
      "Workflow failed. Causes: S05:Read+Segment failed., The job failed because a work item "
      "has failed 4 times.\nLook in previous log entries for the cause of each one",
      "Workflow failed. Causes: S05:Read+Segment failed., The job failed because a work item "
      "has failed 4 times.",
    ),
    (
      "FAILED",
      "Traceback (most recent call last):\n  File x\nValueError: bad\n",
      "ValueError: bad",
    ),
    ("CANCELLED", None, "no error message from Dataflow"),
  ],
)
def test_a_job_that_fails_while_waiting_exits_1_with_its_error_in_one_line(
  state, error, line, monkeypatch, capsys
):
  monkeypatch.setattr(
    submit, "_submit", lambda parser, args, beam_args, argv: _FailedJob(state, error)
  )
  assert cli.main(["submit", "--wait", *CLOUD, *RUN]) == 1
  captured = capsys.readouterr()
  assert "submitted Dataflow job 2026-12-07_01_02_03-456" in captured.out
  assert captured.err.count("\n") == 1, captured.err
  assert captured.err.startswith(
    f"segbeam submit: Dataflow job 2026-12-07_01_02_03-456 ended {state}: {line}"
  ), captured.err
  assert "gcloud dataflow logs list 2026-12-07_01_02_03-456 --region us-central1" in captured.err
