"""segbeam query and summary on a real small run, checked against pyarrow."""

import glob
import json
import os
import statistics

import pyarrow.parquet as pq
import pytest

from segbeam import cli
from segbeam.results import examples
from segbeam.results import output as output_lib
from segbeam.results import query
from segbeam.results import summary


def _segments(output):
  return pq.read_table(glob.glob(os.path.join(output, "segments", "*.parquet"))).to_pylist()


@pytest.mark.parametrize("name", sorted(examples.EXAMPLES))
def test_every_example_query_runs(small_run, name):
  table = query.run_query(output_lib.RunOutput(small_run), examples.EXAMPLES[name][1])
  rows = _segments(small_run)
  if name == "pets-over-half":
    assert table.num_rows == sum(r["coverage_pet"] > 0.5 for r in rows)
  elif name == "least-confident":
    assert (
      table.column("image_id").to_pylist()
      == [r["image_id"] for r in sorted(rows, key=lambda r: (r["mean_confidence"], r["image_id"]))][
        :20
      ]
    )
  elif name == "coverage-histogram":
    per_class = {}
    for row in table.to_pylist():
      per_class[row["class"]] = per_class.get(row["class"], 0) + row["images"]
    assert per_class == {"pet": len(rows), "background": len(rows), "border": len(rows)}
  else:
    assert table.to_pylist()[0]["stage"] == "validate" and table.to_pylist()[0]["inputs"] == 1


def test_summary_numbers_match_an_independent_computation(small_run):
  result = summary.summarize(output_lib.RunOutput(small_run), threshold=0.3)
  rows = _segments(small_run)
  assert result["counts"]["segmented"] == len(rows) == 6
  assert result["counts"]["failed"] == 1
  for stats in result["classes"]:
    values = [r[f"coverage_{stats['class']}"] for r in rows]
    assert stats["mean_coverage"] == pytest.approx(statistics.fmean(values))
    assert stats["median_coverage"] == pytest.approx(statistics.median(values))
    assert stats["dominant_share"] == pytest.approx(
      sum(r["dominant_class"] == stats["class"] for r in rows) / len(rows)
    )
    assert stats["images_above_threshold"] == sum(v > 0.3 for v in values)


def test_cli_formats(small_run, tmp_path, capsys):
  assert (
    cli.main(
      [
        "query",
        small_run,
        "SELECT image_id, mask_png FROM segments ORDER BY 1",
        "--format",
        "table",
      ]
    )
    == 0
  )
  out = capsys.readouterr().out
  assert "pet_000.jpg" in out and "bytes>" in out and "(6 rows)" in out
  assert cli.main(["query", small_run, "SELECT count(*) AS n FROM errors", "--format", "json"]) == 0
  assert json.loads(capsys.readouterr().out) == [{"n": 1}]
  target = tmp_path / "pets.parquet"
  assert (
    cli.main(
      [
        "query",
        small_run,
        "--example",
        "pets-over-half",
        "--format",
        "parquet",
        "--out",
        str(target),
      ]
    )
    == 0
  )
  assert pq.read_table(target).column_names == ["image_id", "coverage_pet", "width", "height"]
  assert cli.main(["query", small_run, "SELECT 1 AS a", "--format", "csv"]) == 0
  assert capsys.readouterr().out.splitlines() == ['"a"', "1"]
  assert cli.main(["summary", small_run, "--json"]) == 0
  assert json.loads(capsys.readouterr().out)["counts"]["inputs_seen"] == 7


def test_incomplete_output_is_refused(tmp_path, small_run, capsys):
  import shutil

  broken = tmp_path / "killed"
  shutil.copytree(small_run, broken)
  os.remove(broken / "manifest.json")
  for command in (["summary", str(broken)], ["query", str(broken), "SELECT 1"]):
    assert cli.main(command) == 2
    assert "did not complete" in capsys.readouterr().err


def test_bad_sql_is_a_clear_error(small_run, capsys):
  assert cli.main(["query", small_run, "SELECT nope FROM segments"]) == 2
  assert "the query failed" in capsys.readouterr().err


def test_a_missing_folder_is_named_as_missing_not_as_an_unfinished_run(tmp_path, capsys):
  missing = tmp_path / "no" / "such-run"
  for command in (
    ["summary", str(missing)],
    ["query", str(missing), "SELECT 1"],
    ["report", str(missing), "--out", str(tmp_path / "r.html")],
  ):
    assert cli.main(command) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"segbeam {command[0]}: {missing} does not exist (no such folder)"
  assert not (tmp_path / "r.html").exists()
  with pytest.raises(output_lib.OutputNotFoundError):
    output_lib.RunOutput(str(missing))
  # Still an unfinished run when the folder is there without a manifest, or an error to catch
  # as one by callers that only ask whether a completed run is there.
  missing.mkdir(parents=True)
  assert cli.main(["summary", str(missing)]) == 2
  assert "did not complete" in capsys.readouterr().err
  (tmp_path / "a-file").write_text("not a run")
  assert cli.main(["summary", str(tmp_path / "a-file")]) == 2
  assert "is a file, not a run's output folder" in capsys.readouterr().err
  assert issubclass(output_lib.OutputNotFoundError, output_lib.IncompleteOutputError)
