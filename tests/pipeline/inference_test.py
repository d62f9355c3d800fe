"""Model handlers: a fake to pin the isolation logic, the real export for both handlers."""

import numpy as np
import pytest
from apache_beam.internal import pickler
from apache_beam.ml.inference import base

from segbeam.pipeline import inference
from segbeam.pipeline import records
from tests import synthetic


class FakeHandler(base.ModelHandler):
  """Doubles numbers; any batch holding b'bad' raises like a decode op would."""

  def __init__(self):
    super().__init__()
    self.batches = []

  def load_model(self):
    return "model"

  def run_inference(self, batch, model, inference_args=None):
    self.batches.append(list(batch))
    if b"bad" in batch:
      raise ValueError("{{node DecodeImage}} Invalid JPEG data")
    if b"boom" in batch:
      raise MemoryError("out of memory")
    return [data * 2 for data in batch]


def test_a_failing_batch_is_retried_one_by_one():
  fake = FakeHandler()
  handler = inference.IsolatingModelHandler(base.KeyedModelHandler(fake))
  batch = [("a", b"1"), ("b", b"bad"), ("c", b"3"), ("d", b"boom")]
  results = dict(handler.run_inference(batch, handler.load_model()))
  assert results["a"] == b"11" and results["c"] == b"33"
  assert results["b"] == inference.InferenceFailure(
      records.STAGE_DECODE, "ValueError", "{{node DecodeImage}} Invalid JPEG data")
  assert results["d"] == inference.InferenceFailure(records.STAGE_INFER, "MemoryError",
                                                    "out of memory")
  assert len(fake.batches) == 1 + len(batch)


def test_a_good_batch_runs_once():
  fake = FakeHandler()
  handler = inference.IsolatingModelHandler(base.KeyedModelHandler(fake))
  assert handler.run_inference([("a", b"1"), ("b", b"2")], "model") == [("a", b"11"),
                                                                      ("b", b"22")]
  assert len(fake.batches) == 1


def test_batch_size_is_fixed_and_bounded(tiny_export):
  export_dir, _ = tiny_export
  for name in inference.HANDLERS:
    handler = inference.create_handler(name, export_dir, max_batch_size=7)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 7, "max_batch_size": 7}


def test_both_handlers_give_the_same_arrays(tiny_export):
  export_dir, _ = tiny_export
  batch = [(f"k{i}", synthetic.encode(synthetic.pet_scene(20 + i, 30, i)[0], "PNG"))
           for i in range(3)] + [("broken", b"\xff\xd8\xff\xe0 not really a jpeg")]
  outputs = {}
  for name in inference.HANDLERS:
    # Through Beam's pickler as a worker gets it; creating it reads nothing, loading counts.
    loads_before = inference.loads_in_this_process()
    handler = pickler.loads(pickler.dumps(
        inference.create_handler(name, export_dir, max_batch_size=8)))
    assert inference.loads_in_this_process() == loads_before
    results = dict(handler.run_inference(batch, handler.load_model()))
    assert inference.loads_in_this_process() == loads_before + 1
    assert results["broken"].stage == records.STAGE_DECODE
    outputs[name] = {k: inference.outputs_as_arrays(v) for k, v in results.items()
                     if k != "broken"}
  tfx, direct = outputs[inference.HANDLER_TFX_BSL], outputs[inference.HANDLER_SAVED_MODEL]
  for key in ("k0", "k1", "k2"):
    assert int(direct[key]["width"]) == 20 + int(key[1]) and int(direct[key]["height"]) == 30
    for output in ("probabilities", "height", "width"):
      np.testing.assert_allclose(tfx[key][output], direct[key][output], atol=1e-6)


def test_creating_a_handler_reads_no_model():
  """The launcher builds handlers; only workers read the model (possibly from gs://)."""
  for name in inference.HANDLERS:
    handler = inference.create_handler(name, "gs://no-such-bucket/model", max_batch_size=4)
    assert handler.get_metrics_namespace() == inference.METRICS_NAMESPACE


def test_unknown_handler():
  with pytest.raises(ValueError, match="unknown inference handler"):
    inference.create_handler("onnx", "/nowhere", max_batch_size=1)


def test_a_failure_names_the_problem_not_the_graph_node():
  error = ValueError("Graph execution error: jpeg::Uncompress failed. Invalid JPEG data. "
                     "[[{{node map/while/body/_1/DecodeJpeg}}]] [Op:__inference_serve_9]")
  failure = inference._failure_for(error)  # pylint: disable=protected-access
  assert failure.stage == "decode" and failure.error_type == "ValueError"
  assert "jpeg::Uncompress failed" in failure.message and "node map" not in failure.message
