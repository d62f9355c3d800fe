"""summary, query and report on an output in gs://, against a real GCS HTTP emulator."""

import pytest

from segbeam import cli
from segbeam.results import output as output_lib
from segbeam.results import query
from tests import gcs_emulator as helper


@pytest.mark.usefixtures("gcs_emulator")  # sets STORAGE_EMULATOR_HOST
def test_results_read_gs_outputs(small_run, tmp_path, capsys):
  helper.upload_folder(small_run, "segbeam-test", "runs/small")
  uri = "gs://segbeam-test/runs/small"
  table = query.run_query(output_lib.RunOutput(uri), "SELECT count(*) AS n FROM segments")
  assert table.to_pylist() == [{"n": 6}]
  assert cli.main(["summary", uri]) == 0
  assert "6 segmented, 1 failed" in capsys.readouterr().out
  target = tmp_path / "report.html"
  assert cli.main(["report", uri, "--out", str(target)]) == 0
  assert target.read_text().count("data:image/jpeg;base64,") == 6
  helper.storage_client().bucket("segbeam-test").blob("runs/small/manifest.json").delete()
  with pytest.raises(output_lib.IncompleteOutputError):
    output_lib.RunOutput(uri)


@pytest.mark.usefixtures("gcs_emulator")
def test_a_prefix_with_no_objects_is_named_as_missing(small_run, capsys):
  helper.upload_folder(small_run, "segbeam-test", "runs/present")
  for uri in (
    "gs://segbeam-test/runs/absent",
    "gs://segbeam-test/runs/pres",  # a name's start
    "gs://segbeam-test/runs/present/segments/nothing-here/",
  ):
    for command in (["summary", uri], ["query", uri, "SELECT 1"]):
      assert cli.main(command) == 2
      assert capsys.readouterr().err.strip() == (
        f"segbeam {command[0]}: {uri} does not exist (no object has that prefix)"
      )
  helper.storage_client().bucket("segbeam-test").blob("runs/present/manifest.json").delete()
  assert cli.main(["summary", "gs://segbeam-test/runs/present"]) == 2
  assert "did not complete" in capsys.readouterr().err
