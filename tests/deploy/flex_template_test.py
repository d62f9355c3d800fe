"""The Flex Template entry: template parameters become `segbeam run` options, and the launch
builds the Dataflow job (dry run here) without waiting for it."""

import json
import os

import pytest
from apache_beam.options.pipeline_options import GoogleCloudOptions
from apache_beam.options.pipeline_options import WorkerOptions

from segbeam import cli
from segbeam import options as options_lib
from segbeam import versions
from segbeam.commands import flex_template
from segbeam.commands import submit


def test_parameters_become_run_options_and_beam_options_pass():
  argv = flex_template.template_argv(
    [
      "--input=gs://b/in/*.png",
      "--output=gs://b/out",
      "--batch_size=16",
      "--mask_files=true",
      "--overwrite=false",
      "--inference_handler=saved-model",
      "--project=my-project-123",
      "--sdk_container_image=img",
    ]
  )
  assert argv == [
    "--input=gs://b/in/*.png",
    "--output=gs://b/out",
    "--batch-size=16",
    "--mask-files",
    "--inference-handler=saved-model",
    "--project=my-project-123",
    "--sdk_container_image=img",
  ]
  options, beam_args = options_lib.parse_args(argv)
  assert options.batch_size == 16 and options.mask_files and not options.overwrite
  assert beam_args == ["--project=my-project-123", "--sdk_container_image=img"]


def test_a_flag_with_a_value_that_is_not_a_boolean_is_refused():
  with pytest.raises(ValueError, match="--mask_files takes true or false"):
    flex_template.template_argv(["--mask_files=maybe"])


def test_launch_builds_the_job_as_the_template_launcher_would():
  result = flex_template.launch(
    [
      "--input=gs://my-bucket/photos/*.jpg",
      "--output=gs://my-bucket/runs/flex",
      "--batch_size=8",
      "--project=my-project-123",
      "--region=us-central1",
      "--temp_location=gs://my-bucket/tmp",
      "--sdk_container_image=img:1",
      "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver",
      "--machine_type=g2-standard-4",
      # Offline: the dry run submits nothing and checks no path.
      "--dry_run=True",
      "--no_auth",
    ]
  )
  job = result.job
  assert job.options.view_as(GoogleCloudOptions).dataflow_service_options == [
    "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
  ]
  assert job.options.view_as(WorkerOptions).sdk_container_image == "img:1"
  names = {t.unique_name for t in job.proto_pipeline.components.transforms.values()}
  assert "Segment/RunInference" in names


def test_the_template_makes_the_same_gpu_job_as_segbeam_submit(capsys):
  """Launched with only what the console asks for, the template's job has segbeam submit's
  GPU, disk, worker and thread defaults."""
  cloud = {
    "project": "my-project-123",
    "region": "us-central1",
    "temp_location": "gs://my-bucket/tmp",
  }
  run = {"input": "gs://my-bucket/photos/*.jpg", "output": "gs://my-bucket/runs/x"}
  image = f"img:{versions.code_tag()}"  # submit refuses an image whose tag names no code
  for gpu in ([], ["nvidia-tesla-t4", "mps"]):
    template = [f"--{k}={v}" for k, v in {**cloud, **run}.items()]
    submitted = [
      "submit",
      "--dry-run",
      "--image",
      image,
      "--job_name",
      "same",
      *(f"--{k.replace('_', '-')}={v}" for k, v in {**cloud, **run}.items()),
    ]
    if gpu:
      template += [f"--gpu_type={gpu[0]}", f"--gpu_sharing={gpu[1]}"]
      submitted += ["--gpu-type", gpu[0], "--gpu-sharing", gpu[1]]
    result = flex_template.launch(
      [
        *template,
        f"--sdk_container_image={image}",
        "--job_name=same",
        "--dry_run=True",
        "--no_auth",
      ]
    )
    assert cli.main(submitted) == 0
    template_job = submit.describe_job(result.job)
    submitted_job = json.loads(capsys.readouterr().out)
    for job in (template_job, submitted_job):  # Beam appends the job's name and start time
      assert job.pop("temp_location").startswith("gs://my-bucket/tmp/same.")
    assert template_job == submitted_job


def test_what_the_launch_gives_wins_over_the_defaults():
  args = flex_template.with_gpu_defaults(
    [
      "--project=my-project-123",
      "--region=us-central1",
      "--temp_location=gs://my-bucket/tmp",
      "--sdk_container_image=img",
      "--max_num_workers=30",
      "--disk_size_gb=200",
      "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1;"
      "install-nvidia-driver;use_nvidia_mps",
      "--experiments=use_runner_v2",
    ]
  )
  assert args.count("--experiments=use_runner_v2") == 1
  assert "--max_num_workers=30" in args and "--max_num_workers=4" not in args
  assert "--disk_size_gb=200" in args and "--disk_size_gb=50" not in args
  assert [a for a in args if a.startswith("--dataflow_service_options")] == [
    "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1;"
    "install-nvidia-driver;use_nvidia_mps"
  ]
  assert "--machine_type=g2-standard-4" in args


def test_a_launch_without_a_temp_location_passes_none_on():
  """Dataflow's launcher may pass no temp location (the job then takes the staging one's): no
  option may be completed with the literal 'None'."""
  args = flex_template.with_gpu_defaults(
    ["--project=my-project-123", "--region=us-central1", "--sdk_container_image=img"]
  )
  assert not [arg for arg in args if arg.startswith("--temp_location")], args
  assert not [arg for arg in args if arg.endswith("=None")], args
  assert "--machine_type=g2-standard-4" in args


def test_the_launcher_refuses_an_sdk_image_tagged_with_other_code():
  with pytest.raises(ValueError, match="is not the image's"):
    flex_template.launch(
      [
        "--input=gs://my-bucket/photos/*.jpg",
        "--output=gs://my-bucket/runs/flex",
        "--project=my-project-123",
        "--region=us-central1",
        "--temp_location=gs://my-bucket/tmp",
        "--sdk_container_image=w:segbeam-0.2.0-0123456789abcdef",
        "--dry_run=True",
        "--no_auth",
      ]
    )


def test_metadata_json_is_made_from_the_option_table():
  """deploy/metadata.json is what `flex_template.metadata` makes of `options.OPTIONS`: an
  option added to the table reaches the template by regenerating it."""
  path = os.path.join(os.path.dirname(__file__), "..", "..", "deploy", "metadata.json")
  with open(path, encoding="utf-8") as f:
    committed = f.read()
  assert committed == flex_template.metadata_json(), (
    "deploy/metadata.json is stale: python -m segbeam.commands.flex_template > deploy/metadata.json"
  )
  names = [p["name"] for p in json.loads(committed)["parameters"]]
  carried = [o.option_string[2:].replace("-", "_") for o in options_lib.OPTIONS if o.flex]
  assert names == carried + list(flex_template.GPU_PARAMETERS)
