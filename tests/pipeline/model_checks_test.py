"""`segbeam run` and `segbeam submit` check the export before anything is written: a graph that
reaches outside the model is refused unless --trust-model, a damaged export always, and a
model file that is not an export gets the command that makes one."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from segbeam import cli
from segbeam import constants
from segbeam import versions
from segbeam.model import contract
from segbeam.model import model_safety
from segbeam.pipeline import inference
from segbeam.pipeline import sessions
from tests import accounting
from tests import synthetic
from tests import unsafe_exports

SEGBEAM = os.path.join(os.path.dirname(sys.executable), "segbeam")
PREPROCESS = "<how it was trained: unit, symmetric, caffe, torch or none>"


@pytest.fixture(autouse=True)
def _no_early_sessions_left():
  yield
  sessions.drop_early()


@pytest.fixture()
def writing_export(tmp_path):
  """(export_dir, the file its serving function writes when called), fresh for each test."""
  written = tmp_path / "written.txt"
  return unsafe_exports.write_export(str(tmp_path / "export"), writes_to=str(written)), written


@pytest.fixture()
def images(tmp_path):
  folder = tmp_path / "in"
  folder.mkdir()
  (folder / "cat.png").write_bytes(synthetic.encode(synthetic.pet_scene(30, 20, 0)[0], "PNG"))
  return str(folder / "*.png")


def _refusal(export_dir):
  """What `model_safety` says of the export, as every command says it."""
  with pytest.raises(model_safety.UnsafeModelError) as refused:
    model_safety.check_saved_model(export_dir)
  assert "WriteFile" in str(refused.value)
  return str(refused.value)


def test_segbeam_run_refuses_a_model_whose_graph_writes_files(writing_export, images, tmp_path):
  """The real command, with its early session load: the refused model is never loaded."""
  export_dir, written = writing_export
  output = tmp_path / "out"
  run = subprocess.run(
    [SEGBEAM, "run", "--input", images, "--output", str(output), "--model", export_dir],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert run.returncode == 2, run.stderr[-3000:]
  assert run.stderr.strip().splitlines()[-1] == f"segbeam run: {_refusal(export_dir)}"
  assert "Traceback" not in run.stderr and run.stdout == ""
  assert not output.exists()
  assert not written.exists()


def test_trust_model_runs_it_and_the_manifest_records_it(writing_export, images, tmp_path, capsys):
  export_dir, written = writing_export
  output = str(tmp_path / "out")
  assert (
    cli.main(["run", "--input", images, "--output", output, "--model", export_dir, "--trust-model"])
    == 0
  )
  assert "1 inputs, 1 segmented, 0 failed" in capsys.readouterr().out
  manifest = accounting.assert_accounted_for(output, inputs_seen=1)
  assert manifest["options"]["trust_model"] is True
  assert manifest["model"]["name"] == "writes-files"
  assert written.read_bytes() == unsafe_exports.WRITTEN  # trusted, so it ran as it was written


def test_an_untrusted_run_records_it(small_run):
  with open(os.path.join(small_run, "manifest.json")) as f:
    assert json.load(f)["options"]["trust_model"] is False


def test_the_early_session_load_never_loads_a_refused_model(writing_export):
  """`segbeam run` starts loading the session before it parses its options in full; that load
  runs the serving function once (its warm-up), so it checks the graph first."""
  export_dir, written = writing_export
  for trust in (False, True):
    sessions.load_early(
      export_dir,
      signature_name=contract.SIGNATURE_NAME,
      warm_up_size=unsafe_exports.INPUT_SIZE,
      trust_model=trust,
    )
    session = sessions.take_early(export_dir)
    assert (session is not None) is trust
    assert written.exists() is trust  # what an unchecked early load would have done


@pytest.mark.parametrize("name", constants.HANDLERS)
def test_a_workers_handler_checks_the_graph_again(name, writing_export):
  export_dir, written = writing_export
  handler = inference.create_handler(name, export_dir, max_batch_size=2)
  with pytest.raises(model_safety.UnsafeModelError, match="model refused"):
    handler.load_model()
  trusting = inference.create_handler(name, export_dir, max_batch_size=2, trust_model=True)
  image = synthetic.encode(synthetic.pet_scene(20, 30, 0)[0], "PNG")
  [(_, result)] = trusting.run_inference([("k", image)], trusting.load_model())
  assert int(inference.outputs_as_arrays(result)["width"]) == 20
  assert written.exists()


def _damaged_copy(tiny_export, tmp_path, how):
  export_dir = str(tmp_path / "damaged")
  shutil.copytree(tiny_export[0], export_dir)
  if how == "truncated":
    data = os.path.join(export_dir, "variables", "variables.data-00000-of-00001")
    with open(data, "r+b") as f:
      f.truncate(os.path.getsize(data) // 2)
    return export_dir, f"segbeam run: model damaged: {data}: checkpoint entry "
  path = os.path.join(export_dir, model_safety.SAVED_MODEL_FILE)
  os.remove(path)
  return export_dir, f"segbeam run: model damaged: {path} is missing"


@pytest.mark.parametrize("trust", [False, True])
@pytest.mark.parametrize("how", ["truncated", "missing_saved_model"])
def test_a_damaged_export_exits_2_and_writes_nothing(
  how, trust, tiny_export, images, tmp_path, capsys
):
  export_dir, expected = _damaged_copy(tiny_export, tmp_path, how)
  output = tmp_path / "out"
  code = cli.main(
    [
      "run",
      "--input",
      images,
      "--output",
      str(output),
      "--model",
      export_dir,
      *(["--trust-model"] if trust else []),
    ]
  )
  err = capsys.readouterr().err.strip()
  assert code == 2 and len(err.splitlines()) == 1 and err.startswith(expected), err
  if how == "truncated":
    assert "Read less bytes than requested" in err
  assert not output.exists()


@pytest.mark.parametrize("name", ["unet.keras", "unet.h5", "unet.hdf5"])
def test_a_keras_file_gets_the_export_command(name, images, tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / name).write_bytes(b"a Keras model file")
  code = cli.main(["run", "--input", images, "--output", "out", "--model", name])
  assert code == 2
  assert capsys.readouterr().err == (
    f"segbeam run: model unreadable: {name} is a Keras model file, not a segbeam export; "
    f"make one with: segbeam export {name} --output unet-export --preprocess {PREPROCESS}\n"
  )
  assert not (tmp_path / "out").exists()


def test_a_plain_saved_model_gets_the_export_command(tiny_export, images, tmp_path, capsys):
  saved_model = tmp_path / "my model"
  shutil.copytree(tiny_export[0], saved_model)
  (saved_model / contract.METADATA_FILE).unlink()
  code = cli.main(
    ["run", "--input", images, "--output", str(tmp_path / "out"), "--model", str(saved_model)]
  )
  assert code == 2
  assert capsys.readouterr().err == (
    f"segbeam run: model unreadable: {saved_model} is a SavedModel without "
    f"segbeam_model.json, not a segbeam export; make one with: segbeam export "
    f"'{saved_model}' --output '{saved_model}-export' --preprocess {PREPROCESS}\n"
  )


def test_gs_models_are_checked_in_their_local_copy_by_run_and_submit(
  gcs_emulator, writing_export, tiny_export, tmp_path, capsys
):
  """A gs:// export is copied once and checked there; what is said names the gs:// files."""
  del gcs_emulator
  from tests import gcs_emulator as helper

  export_dir, written = writing_export
  helper.upload_folder(export_dir, "segbeam-test", "checks/writing")
  damaged, _ = _damaged_copy(tiny_export, tmp_path, "truncated")
  helper.upload_folder(damaged, "segbeam-test", "checks/damaged")
  root = "gs://segbeam-test/checks"

  run = ["--input", f"{root}/in/*.png", "--output", f"{root}/out"]
  assert cli.main(["run", *run, "--model", f"{root}/damaged"]) == 2
  assert capsys.readouterr().err.startswith(
    f"segbeam run: model damaged: {root}/damaged/variables/variables.data-00000-of-00001: "
    "checkpoint entry "
  )

  assert cli.main(["run", *run, "--model", f"{root}/unet.keras"]) == 2
  assert capsys.readouterr().err == (
    f"segbeam run: model unreadable: {root}/unet.keras is a Keras model file, not a segbeam "
    "export; copy it here and make one with: segbeam export unet.keras --output unet-export "
    f"--preprocess {PREPROCESS}\n"
  )

  image = f"img:{versions.code_tag()}"  # submit refuses an image tagged with no code
  cloud = ["--project", "my-project-123", "--temp-location", f"{root}/tmp", "--image", image]
  assert cli.main(["submit", *cloud, *run, "--model", f"{root}/writing"]) == 2
  assert capsys.readouterr().err == f"segbeam submit: {_refusal(export_dir)}\n"
  assert not written.exists()


# --- Only saved_model.pb is checked, so only it may be loaded ------------------------------------

PBTXT = "saved_model.pbtxt"


def _graph_files(tmp_path, how):
  """(export_dir, the file its hostile graph writes when called). TensorFlow's loaders read
  saved_model.pbtxt where saved_model.pb is missing; `how` is 'pbtxt_only' (the hostile graph
  as text, no saved_model.pb) or 'pbtxt_beside' (a harmless saved_model.pb of the same
  variables, the hostile graph as saved_model.pbtxt beside it)."""
  from google.protobuf import text_format

  written = tmp_path / "written.txt"
  hostile = unsafe_exports.write_export(str(tmp_path / "hostile"), writes_to=str(written))
  proto = model_safety.read_saved_model(hostile)
  if how == "pbtxt_only":
    export_dir = hostile
  else:
    export_dir = unsafe_exports.write_export(str(tmp_path / "harmless"))
  with open(os.path.join(export_dir, PBTXT), "w") as f:
    f.write(text_format.MessageToString(proto))
  if how == "pbtxt_only":
    os.remove(os.path.join(export_dir, model_safety.SAVED_MODEL_FILE))
  return export_dir, written


def _pbtxt_refusal(export_dir, how):
  if how == "pbtxt_only":
    return (
      f"model damaged: {os.path.join(export_dir, model_safety.SAVED_MODEL_FILE)} is missing "
      f"(segbeam reads only saved_model.pb, never the {PBTXT} there)"
    )
  return (
    f"model refused: {export_dir} holds {PBTXT} beside saved_model.pb; segbeam checks only "
    "saved_model.pb, so no loader may be given another graph file: remove it, or pass "
    "--trust-model if you trust it"
  )


HOW = ["pbtxt_only", "pbtxt_beside"]


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("name", constants.HANDLERS)
def test_every_handler_refuses_a_graph_file_it_did_not_check(name, how, tmp_path):
  export_dir, written = _graph_files(tmp_path, how)
  handler = inference.create_handler(name, export_dir, max_batch_size=2)
  with pytest.raises(ValueError) as refused:
    handler.load_model()
  assert str(refused.value) == _pbtxt_refusal(export_dir, how)
  assert not written.exists()


@pytest.mark.parametrize("how", HOW)
def test_segment_images_refuses_a_graph_file_it_did_not_check(how, tmp_path):
  """The Python API in a real pipeline: refused when the pipeline is built, and by the workers'
  load should the export change after (here: made hostile once the transform exists)."""
  import apache_beam as beam
  from apache_beam.testing.test_pipeline import TestPipeline

  from segbeam.pipeline import elements
  from segbeam.pipeline import transforms

  export_dir, written = _graph_files(tmp_path, how)
  with pytest.raises(ValueError) as refused:
    transforms.SegmentImages(export_dir)
  assert str(refused.value) == _pbtxt_refusal(export_dir, how)

  image = synthetic.encode(synthetic.pet_scene(20, 30, 0)[0], "PNG")
  later = tmp_path / "later"
  shutil.copytree(unsafe_exports.write_export(str(tmp_path / "fine")), later)
  segment = transforms.SegmentImages(str(later), batch_size=1)
  shutil.rmtree(later)  # the hostile files replace the checked ones
  shutil.copytree(export_dir, later)
  with pytest.raises(Exception, match=re.escape(_pbtxt_refusal(str(later), how))):
    with TestPipeline() as pipeline:
      _ = (
        pipeline
        | beam.Create([elements.ImageRecord("cat.png", "memory://cat.png", image)])
        | segment
      )
  assert not written.exists()


@pytest.mark.parametrize("how", HOW)
def test_loaded_export_and_the_early_session_refuse_a_graph_file_they_did_not_check(how, tmp_path):
  from segbeam.model import export as export_lib

  export_dir, written = _graph_files(tmp_path, how)
  with pytest.raises(ValueError) as refused:
    export_lib.LoadedExport(export_dir)
  assert str(refused.value) == _pbtxt_refusal(export_dir, how)
  with pytest.raises(ValueError, match="model (damaged|refused)"):
    sessions.load_session(export_dir)
  sessions.load_early(
    export_dir, signature_name=contract.SIGNATURE_NAME, warm_up_size=unsafe_exports.INPUT_SIZE
  )
  assert sessions.take_early(export_dir) is None
  assert not written.exists()


@pytest.mark.parametrize("trust", [False, True])
def test_segbeam_run_refuses_a_pbtxt_only_export_as_damaged(trust, tmp_path, images, capsys):
  export_dir, written = _graph_files(tmp_path, "pbtxt_only")
  output = tmp_path / "out"
  argv = ["run", "--input", images, "--output", str(output), "--model", export_dir]
  assert cli.main([*argv, *(["--trust-model"] if trust else [])]) == 2
  err = capsys.readouterr().err
  assert err == f"segbeam run: {_pbtxt_refusal(export_dir, 'pbtxt_only')}\n"
  assert not output.exists() and not written.exists()


def test_tensorflow_reads_saved_model_pb_before_a_pbtxt_beside_it(tmp_path):
  """Why a trusted export with both still loads only what would have been checked: every
  loader segbeam uses prefers saved_model.pb (loader_impl.parse_saved_model)."""
  from segbeam.model import export as export_lib

  export_dir, written = _graph_files(tmp_path, "pbtxt_beside")
  image = synthetic.encode(synthetic.pet_scene(20, 30, 0)[0], "PNG")
  for name in constants.HANDLERS:
    handler = inference.create_handler(name, export_dir, max_batch_size=2, trust_model=True)
    [(_, result)] = handler.run_inference([("k", image)], handler.load_model())
    assert int(inference.outputs_as_arrays(result)["width"]) == 20
  export_lib.LoadedExport(export_dir, trust_model=True).predict([image])
  assert not written.exists()


def test_a_resume_with_another_exports_weights_is_refused_though_its_metadata_matches(
  tiny_export, tiny_model, tiny_config, tmp_path, capsys
):
  """The claim records the model's files, not only the name and version its
  segbeam_model.json claims: an export with other weights and a copied segbeam_model.json
  resumed a killed run and mixed two models' rows under one version (red-teamed)."""
  import dataclasses

  import keras

  from segbeam import options as options_lib
  from segbeam.commands import run as run_command
  from segbeam.model import export as export_lib
  from segbeam.model import labels
  from segbeam.run import job
  from segbeam.run import output_claim

  inputs = tmp_path / "in"
  inputs.mkdir()
  (inputs / "a.png").write_bytes(synthetic.encode(synthetic.pet_scene(20, 16, 0)[0], "PNG"))
  # Other weights, exported as segbeam exports, then given the first export's metadata.
  other_model = keras.models.clone_model(tiny_model)
  other_model.set_weights([w + 0.5 for w in tiny_model.get_weights()])
  other = str(tmp_path / "other")
  export_lib.export_model(other_model, tiny_config, other, label_map=labels.OXFORD_PET_TRIMAP)
  shutil.copy(os.path.join(tiny_export[0], contract.METADATA_FILE), other)
  output = str(tmp_path / "out")
  argv = ["--input", str(inputs / "*.png"), "--output", output, "--quiet"]
  options, _ = options_lib.parse_args([*argv, "--model", tiny_export[0], "--run-id", "killed"])
  _, metadata = job._read_model(tiny_export[0])
  gone = subprocess.Popen(["true"])
  gone.wait()
  killed = output_claim.new_claim(
    "killed", options.started, ("segbeam", "run"), job.fingerprint(options, metadata)
  )
  output_claim.claim(output, dataclasses.replace(killed, pid=gone.pid))
  assert run_command.main([*argv, "--model", other, "--resume"]) == 2
  line = capsys.readouterr().err.strip().splitlines()[-1]
  assert "--resume refused" in line and "--model files 'sha256:" in line, line
  assert run_command.main([*argv, "--model", tiny_export[0], "--resume"]) == 0
  accounting.assert_accounted_for(output, inputs_seen=1)
