"""segbeam's run options: parsed from the command line, checked before a pipeline is built."""

import argparse
import dataclasses
import re

import pytest

from segbeam import constants
from segbeam import options as options_lib
from segbeam.commands import submit
from segbeam.pipeline import schema
from segbeam.run import journal


def _parse(*argv):
  parser = argparse.ArgumentParser()
  options_lib.add_arguments(parser)
  return options_lib.from_args(parser.parse_args(["--input", "in/*", "--output", "out/", *argv]))


def test_defaults_from_the_command_line():
  options = _parse()
  assert (options.output, options.batch_size, options.input_format) == (
    "out",
    32,
    constants.FORMAT_AUTO,
  )
  assert options.example_keys == options_lib.ExampleKeys()
  assert options.run_id and options.started


@pytest.mark.parametrize(
  "flag",
  [
    "--batch-size",
    "--max-pixels",
    "--max-file-bytes",
    "--read-concurrency",
    "--inference-slices",
    "--postprocess-threads",
  ],
)
def test_counts_below_one_are_refused_by_name(flag):
  assert _parse(flag, "1")  # the smallest allowed
  with pytest.raises(ValueError, match=f"^{flag} must be at least 1, got 0$"):
    _parse(flag, "0")


@pytest.mark.parametrize(
  "argv,words",
  [
    (
      ["--input", "in/a.jpg", "in/b.jpg", "--output", "out"],
      "--input is followed by 2 paths (in/a.jpg, in/b.jpg): the shell expanded an unquoted glob",
    ),
    (
      [
        "--output",
        "out",
        "--ground-truth",
        "t/1.png",
        "t/2.png",
        "t/3.png",
        "t/4.png",
        "--input",
        "x",
      ],
      "--ground-truth is followed by 4 paths (t/1.png, t/2.png, t/3.png, ...)",
    ),
    (
      ["--input", "a/*", "--output", "out", "--input=b/*"],
      "--input given 2 times (a/*, b/*): one pattern per run",
    ),
  ],
)
def test_a_pattern_is_given_once_as_one_word(argv, words):
  with pytest.raises(ValueError, match="^" + re.escape(words)):
    options_lib.check_patterns_given_once(argv)


@pytest.mark.parametrize(
  "argv",
  [
    ["--input", "in/*.jpg", "--output", "out", "--runner", "DirectRunner"],  # Beam's own values
    ["--input=in/*.jpg", "--ground-truth=t/*.png", "--output", "out"],
    ["--output", "out", "--input", "in/*.jpg"],
  ],
)
def test_one_pattern_each_passes(argv):
  options_lib.check_patterns_given_once(argv)


@pytest.mark.parametrize(
  "pattern,matched_as",
  [
    ("*.jpg", "./*.jpg"),
    ("a/*.jpg", "a/*.jpg"),
    ("/data/*.jpg", "/data/*.jpg"),
    ("gs://b/*.jpg", "gs://b/*.jpg"),
    (None, None),
  ],
)
def test_a_local_pattern_without_a_folder_is_matched_in_the_current_one(pattern, matched_as):
  assert options_lib.in_a_folder(pattern) == matched_as


@pytest.mark.parametrize(
  "argv, handler",
  [
    ([], constants.GPU_JOB_HANDLER),
    (["--inference-handler", "tfx-bsl"], "tfx-bsl"),
    (["--inference-handler=tfx-bsl"], "tfx-bsl"),
    (["--inference-handler", "saved-model"], "saved-model"),
  ],
)
def test_a_gpu_job_takes_its_handler_unless_one_is_named(argv, handler):
  options, _ = options_lib.parse_args(["--input", "in/*", "--output", "out", *argv])
  gpu_job = submit.for_gpu_job(options, argv)
  assert gpu_job.handler == handler and gpu_job.require_gpu
  assert options_lib.parse_args(["--input", "in/*", "--output", "out"])[0].handler == (
    constants.HANDLER_TFX_BSL  # a local run's default stays
  )


def test_resume_and_overwrite_exclude_each_other():
  assert _parse("--resume").resume
  with pytest.raises(ValueError, match="--resume continues .* --overwrite replaces it"):
    _parse("--resume", "--overwrite")


@pytest.mark.parametrize(
  "run_id",
  [
    "../escape",
    "/tmp/abs",
    "a/b",
    "a\\b",
    ".",
    "..",
    "-leading-dash",
    ".hidden",
    "nul\0byte",
    "new\nline",
    "glob*",
    "x" * 129,
    "ünïcode",
  ],
)
def test_a_run_id_that_is_not_a_safe_name_is_refused(run_id):
  with pytest.raises(ValueError, match="--run-id"):
    _parse(f"--run-id={run_id}")
  # Every place a run id names a file refuses it too, whoever built the options.
  with pytest.raises(ValueError, match="--run-id"):
    journal.parts_pattern("out", journal.SEGMENTS, run_id)
  with pytest.raises(ValueError, match="--run-id"):
    journal.JournalRows(
      "out", journal.ERRORS, schema.ERRORS_SCHEMA, journal.stamp(run_id, "t", "m", "1"), 10
    )


@pytest.mark.parametrize(
  "run_id", ["20261207T014614Z-1a2b3c", "nightly_2026.12.07", "A", "x" * 128]
)
def test_safe_run_ids_and_the_default_pass(run_id):
  assert _parse("--run-id", run_id).run_id == run_id
  default = _parse().run_id
  assert options_lib.check_run_id(default) == default


def test_segments_files_is_bounded():
  assert _parse("--segments-files", str(constants.MAX_SEGMENTS_FILES)).segments_files == (
    constants.MAX_SEGMENTS_FILES
  )
  with pytest.raises(
    ValueError, match=f"--segments-files must be at most {constants.MAX_SEGMENTS_FILES}"
  ):
    _parse("--segments-files", str(constants.MAX_SEGMENTS_FILES + 1))
  parser = argparse.ArgumentParser()
  options_lib.add_arguments(parser)
  assert f"at most {constants.MAX_SEGMENTS_FILES}" in parser.format_help().replace(
    "\n", " "
  ).replace("  ", " ")


def test_the_python_api_refuses_an_unsafe_run_id(tiny_export):
  from segbeam.pipeline import transforms  # noqa: PLC0415  # loads TensorFlow

  export_dir, metadata = tiny_export
  with pytest.raises(ValueError, match="--run-id"):
    transforms.SegmentImages(export_dir, metadata=metadata, run_id="../../elsewhere")
  assert transforms.SegmentImages(export_dir, metadata=metadata, run_id="fine-1").run_id == "fine-1"


def test_argparse_the_dataclass_and_the_fingerprint_follow_the_table():
  parser = argparse.ArgumentParser()
  options_lib.add_arguments(parser)
  by_dest = {action.dest: action for action in parser._actions if action.option_strings}
  fields = [field.name for field in dataclasses.fields(options_lib.RunOptions)]
  assert fields == [option.name for option in options_lib.OPTIONS]
  for option in options_lib.OPTIONS:
    if not option.on_command_line:  # set by the run itself
      assert option.name not in by_dest
      continue
    action = by_dest[option.name]
    assert action.option_strings == [option.option_string]
    assert action.help == option.help and action.required == option.required
  options = _parse()
  for option in options_lib.OPTIONS:
    if not option.required and option.name not in ("run_id", "started"):
      assert getattr(options, option.name) == option.default, option.name
  flags = [option.option_string for option in options_lib.OPTIONS if option.changes_rows]
  keys = ["--image-key", "--filename-key", "--label-key"]
  expected = [flag for flag in flags if flag not in keys[1:]]
  expected[expected.index(keys[0])] = "--*-key"  # recorded together, as segbeam always has
  assert list(options_lib.fingerprint_values(options)) == expected
  assert options_lib.fingerprint_values(options)["--*-key"] == list(
    dataclasses.astuple(options.example_keys)
  )


@pytest.mark.parametrize(
  "option", [o for o in options_lib.OPTIONS if o.check], ids=lambda o: o.name
)
def test_each_check_of_the_table_runs_from_the_command_line_and_the_python_api(option):
  bad = "-1" if option.name not in ("run_id",) else "../x"
  with pytest.raises(ValueError, match=re.escape(option.option_string)):
    _parse(option.option_string, bad)
  with pytest.raises(ValueError, match=re.escape(option.option_string)):
    options_lib.check(**{option.name: option.type(bad)})
