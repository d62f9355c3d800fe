"""The tfx-bsl handler's session: its options, and loading it before Beam is imported."""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from segbeam import constants
from segbeam import options as options_lib
from segbeam.model import contract
from segbeam.model import defaults
from segbeam.pipeline import inference
from segbeam.pipeline import sessions
from tests import synthetic


@pytest.fixture(autouse=True)
def _no_early_sessions_left():
  yield
  sessions.drop_early()


@pytest.mark.parametrize("on_gpu", [False, True])
def test_grappler_rewrites_the_graph_only_on_a_gpu(on_gpu):
  config = sessions.session_config(on_gpu=on_gpu)
  assert config.graph_options.rewrite_options.disable_meta_optimizer is not on_gpu


def test_the_tfx_bsl_handler_runs_in_a_session_with_segbeams_options(tiny_export):
  export_dir, _ = tiny_export
  handler = inference.create_handler(constants.HANDLER_TFX_BSL, export_dir, max_batch_size=4)
  session = handler.load_model().session
  on_gpu = bool(tf.config.list_physical_devices("GPU"))
  assert session._config == sessions.session_config(on_gpu=on_gpu)


def test_the_handler_takes_the_early_session_once_and_infers_as_with_its_own(tiny_export):
  export_dir, config = tiny_export
  sessions.load_early(
    export_dir, signature_name=contract.SIGNATURE_NAME, warm_up_size=config.input_size
  )
  handler = inference.create_handler(constants.HANDLER_TFX_BSL, export_dir, max_batch_size=4)
  early_model = handler.load_model()
  own_model = handler.load_model()  # taken once: this one loads its own session
  assert early_model.session is not own_model.session
  image = synthetic.encode(synthetic.pet_scene(20, 30, 0)[0], "PNG")
  results = [
    inference.outputs_as_arrays(handler.run_inference([("k", image)], model)[0][1])
    for model in (early_model, own_model)
  ]
  assert int(results[0]["width"]) == 20 and int(results[0]["height"]) == 30
  np.testing.assert_array_equal(results[0]["probabilities"], results[1]["probabilities"])


def test_a_failed_early_load_leaves_the_load_to_the_handler(tmp_path):
  missing = str(tmp_path / "no-model")
  sessions.load_early(missing, signature_name=contract.SIGNATURE_NAME, warm_up_size=8)
  assert sessions.take_early(missing) is None
  assert sessions.take_early(missing) is None  # nothing left either


def test_a_dropped_early_session_is_not_taken(tiny_export):
  export_dir, config = tiny_export
  sessions.load_early(
    export_dir, signature_name=contract.SIGNATURE_NAME, warm_up_size=config.input_size
  )
  sessions.drop_early()
  assert sessions.take_early(export_dir) is None


@pytest.mark.parametrize(
  "argv, loads",
  [
    ([], True),  # the embedded default model, tfx-bsl
    (["--inference-handler", "saved-model"], False),
    (["--model", "gs://bucket/model"], False),  # the run copies it first
    (["--model", "/no/such/export"], False),  # the run's checks report it
  ],
)
def test_which_runs_load_their_session_early(argv, loads):
  options, _ = options_lib.parse_args(["--input", "x/*", "--output", "out", *argv])
  assert sessions.load_early_for(options) is loads
  assert (sessions.take_early(defaults.default_model_dir()) is not None) is (
    loads and "--model" not in argv
  )


def test_the_early_load_starts_before_beam_is_imported(tiny_export):
  """What it is for: `segbeam run` loads the session while Beam is being imported."""
  export_dir, _ = tiny_export
  code = (
    "import sys; from segbeam import quiet; quiet.import_tensorflow(); "
    "from segbeam import options; from segbeam.pipeline import sessions; "
    "started = sessions.load_early_for(options.parse_args(['--input', 'x/*', '--output', "
    f"'out', '--model', {export_dir!r}])[0]); "
    "print(started, 'apache_beam' in sys.modules); "
    f"print(sessions.take_early({export_dir!r}) is not None)"
  )
  out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
  assert out.stdout.split() == ["True", "False", "True"]
  # The TF1 loader's deprecation notice was the first thing every `segbeam run` printed.
  assert "deprecated" not in out.stderr, out.stderr
