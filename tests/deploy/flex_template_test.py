"""The Flex Template entry: template parameters become `segbeam run` options, and the launch
builds the Dataflow job (dry run here) without waiting for it."""

import pytest
from apache_beam.options.pipeline_options import GoogleCloudOptions
from apache_beam.options.pipeline_options import WorkerOptions

from segbeam.pipeline import flex_template
from segbeam.pipeline import launcher


def test_parameters_become_run_options_and_beam_options_pass():
  argv = flex_template.template_argv([
      "--input=gs://b/in/*.png", "--output=gs://b/out", "--batch_size=16", "--mask_files=true",
      "--overwrite=false", "--inference_handler=saved-model", "--project=my-project-123",
      "--sdk_container_image=img"])
  assert argv == ["--input=gs://b/in/*.png", "--output=gs://b/out", "--batch-size=16",
                  "--mask-files", "--inference-handler=saved-model", "--project=my-project-123",
                  "--sdk_container_image=img"]
  options, beam_args = launcher.parse(argv)
  assert options.batch_size == 16 and options.mask_files and not options.overwrite
  assert beam_args == ["--project=my-project-123", "--sdk_container_image=img"]


def test_a_flag_with_a_value_that_is_not_a_boolean_is_refused():
  with pytest.raises(ValueError, match="--mask_files takes true or false"):
    flex_template.template_argv(["--mask_files=maybe"])


def test_launch_builds_the_job_as_the_template_launcher_would():
  result = flex_template.launch([
      "--input=gs://my-bucket/photos/*.jpg", "--output=gs://my-bucket/runs/flex",
      "--batch_size=8", "--project=my-project-123", "--region=us-central1",
      "--temp_location=gs://my-bucket/tmp", "--sdk_container_image=img:1",
      "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver",
      "--machine_type=g2-standard-4",
      # Offline: the dry run submits nothing and checks no path.
      "--dry_run=True", "--no_auth"])
  job = result.job
  assert job.options.view_as(GoogleCloudOptions).dataflow_service_options == [
      "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"]
  assert job.options.view_as(WorkerOptions).sdk_container_image == "img:1"
  names = {t.unique_name for t in job.proto_pipeline.components.transforms.values()}
  assert "Segment/RunInference" in names
