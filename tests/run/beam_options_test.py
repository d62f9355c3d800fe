"""segbeam's options beside Beam's: every Beam option passes through untouched, and an option
neither knows is refused instead of dropped."""

import json

import pytest
from apache_beam.testing.test_pipeline import TestPipeline

from segbeam import cli
from segbeam import options as options_lib
from segbeam import versions
from segbeam.commands import submit
from segbeam.run import beam_options

# A whole `segbeam submit` command line, built offline (--dry-run).
SUBMIT_DRY_RUN = [
  "--dry-run",
  "--project",
  "my-project-123",
  "--temp-location",
  "gs://my-bucket/tmp",
  "--image",
  f"img:{versions.code_tag()}",  # an image tagged with this code (docs/dataflow.md)
  "--input",
  "gs://my-bucket/in/*",
  "--output",
  "gs://my-bucket/out",
]

# segbeam submit takes these Beam options over under Beam's own spelling (with its dashed
# twin), so they reach Beam once, from the values segbeam submit checked.
SUBMIT_TAKES_OVER = {
  "--project",
  "--region",
  "--temp_location",
  "--staging_location",
  "--sdk_container_image",
  "--machine_type",
  "--max_num_workers",
  "--disk_size_gb",
  "--number_of_worker_harness_threads",
}


def _parse(argv):
  """As `segbeam run` reads its command line: segbeam's options, then Beam's checked."""
  options, beam_args = options_lib.parse_args(argv)
  beam_options.check_beam_args(beam_args, beam_options.option_strings(options_lib.run_parser()))
  return options, beam_args


def _normal(option: str) -> str:
  return option.replace("-", "_")


def _segbeam_options():
  run = beam_options.option_strings(options_lib.run_parser())
  dataflow = beam_options.option_strings(submit.build_parser())
  return {o for o in run + dataflow if o.startswith("--") and o != "--help"}


def test_no_segbeam_option_shadows_a_beam_option():
  beam = {_normal(o) for o in beam_options.option_strings(beam_options.beam_parser())}
  taken_over = {_normal(o) for o in SUBMIT_TAKES_OVER}
  assert taken_over <= beam  # still Beam's names: the list is not stale
  clashes = sorted(
    o for o in _segbeam_options() if _normal(o) in beam and _normal(o) not in taken_over
  )
  # --dry-run is Beam's --dry_run, which segbeam submit sets itself from it.
  assert clashes == ["--dry-run"]


@pytest.mark.parametrize("parser", ["run", "submit"])
def test_no_option_is_taken_by_its_prefix(parser):
  built = options_lib.run_parser() if parser == "run" else submit.build_parser()
  assert built.allow_abbrev is False and beam_options.beam_parser().allow_abbrev is False
  # The prefix of a segbeam option is Beam's here: it must reach Beam, not segbeam.
  args, rest = built.parse_known_args(
    ["--input", "x", "--output", "y", "--label", "team=a", "--mask-file"]
    + (
      ["--project", "p-123456", "--temp-location", "gs://my-bucket/tmp", "--image", "i"]
      if parser == "submit"
      else []
    )
  )
  assert rest == ["--label", "team=a", "--mask-file"] and args.ground_truth is None


def test_beam_options_pass_and_unknown_ones_are_refused():
  options, beam_args = _parse(
    [
      "--input",
      "x/*",
      "--output",
      "y",
      "--label",
      "team=a",
      '--labels={"cost": "b"}',
      "--direct_num_workers=2",
    ]
  )
  assert options.ground_truth is None
  assert beam_args == ["--label", "team=a", '--labels={"cost": "b"}', "--direct_num_workers=2"]
  with pytest.raises(ValueError, match=r"unknown option --mask-file: .*did you mean --mask-files"):
    _parse(["--input", "x/*", "--output", "y", "--mask-file"])
  with pytest.raises(
    ValueError,
    match=r"^unknown option --sharpen: neither segbeam's nor a Beam "
    r"pipeline option$",
  ):
    _parse(["--input", "x/*", "--output", "y", "--sharpen", "auto"])
  with pytest.raises(ValueError, match=r"unexpected argument 'extra'"):
    _parse(["--input", "x/*", "--output", "y", "extra"])


def test_a_ground_truth_glob_given_as_labels_is_refused():
  with pytest.raises(
    ValueError,
    match=r"--labels 'trimaps/\*.png': --labels is Beam's, "
    r"Dataflow job labels .* --ground-truth GLOB",
  ):
    _parse(["--input", "x/*", "--output", "y", "--labels", "trimaps/*.png"])


@pytest.mark.parametrize("command", ["run", "submit"])
def test_unknown_options_exit_2_in_one_line(command, tmp_path, capsys):
  argv = [
    "--input",
    str(tmp_path / "*.jpg"),
    "--output",
    str(tmp_path / "out"),
    "--sharpen",
    "auto",
  ]
  if command == "submit":
    argv = [*SUBMIT_DRY_RUN, "--gpu-typ", "nvidia-l4"]
  assert cli.main([command, *argv]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and f"segbeam {command}: unknown option" in err
  if command == "submit":
    assert "did you mean --gpu-type?" in err
  assert not (tmp_path / "out").exists()


def test_job_labels_reach_the_dataflow_job(capsys):
  assert (
    cli.main(
      [
        "submit",
        *SUBMIT_DRY_RUN,
        "--label",
        "team=vision",
        "--label",
        "cost-centre=42",
      ]
    )
    == 0
  )
  job = json.loads(capsys.readouterr().out)
  assert job["labels"] == {"team": "vision", "cost-centre": "42"}


def test_default_runner_avoids_prism_but_can_be_overridden():
  assert beam_options.pipeline_options([]).get_all_options()["runner"] == "FnApiRunner"
  chosen = beam_options.pipeline_options(["--runner=DirectRunner"])
  assert chosen.get_all_options()["runner"] == "DirectRunner"


def test_test_pipelines_run_on_segbeams_default_runner():
  """conftest.py: what the tests' TestPipelines run on is what `segbeam run` runs on."""
  assert TestPipeline().get_pipeline_options().get_all_options()["runner"] == (
    beam_options.DEFAULT_LOCAL_RUNNER
  )


@pytest.mark.parametrize(
  "beam_args, in_process",
  [
    ([], True),  # segbeam's default, the FnApiRunner
    (["--runner=DirectRunner"], True),
    (["--runner=direct", "--direct_num_workers=2", "--direct_running_mode=multi_threading"], True),
    (["--runner=DirectRunner", "--direct_running_mode=multi_processing"], False),
    (["--runner=PortableRunner", "--job_endpoint=localhost:1"], False),
    (["--runner=DataflowRunner"], False),
  ],
)
def test_the_early_session_is_used_only_where_the_runner_runs_in_this_process(
  beam_args, in_process
):
  options = beam_options.pipeline_options(beam_args)
  assert beam_options.runs_in_this_process(options) is in_process
