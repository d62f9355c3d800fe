"""Model handlers: a fake to pin the isolation logic, the real export for both handlers."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from apache_beam.internal import pickler
from apache_beam.ml.inference import base

from segbeam.pipeline import constants
from segbeam.pipeline import elements
from segbeam.pipeline import inference
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
    elements.STAGE_DECODE, "ValueError", "{{node DecodeImage}} Invalid JPEG data"
  )
  assert results["d"] == inference.InferenceFailure(
    elements.STAGE_INFER, "MemoryError", "out of memory"
  )
  assert len(fake.batches) == 1 + len(batch)


def test_a_good_batch_runs_once():
  fake = FakeHandler()
  handler = inference.IsolatingModelHandler(base.KeyedModelHandler(fake))
  assert handler.run_inference([("a", b"1"), ("b", b"2")], "model") == [("a", b"11"), ("b", b"22")]
  assert len(fake.batches) == 1


@pytest.mark.parametrize(
  "size, slices, expected",
  [
    (32, 2, [(0, 16), (16, 32)]),
    (7, 2, [(0, 3), (3, 7)]),
    (10, 4, [(0, 2), (2, 5), (5, 7), (7, 10)]),
    (3, 4, [(0, 1), (1, 2), (2, 3)]),  # a small last batch: no empty slices
    (5, 1, [(0, 5)]),
  ],
)
def test_slices_cover_the_batch_in_order(size, slices, expected):
  assert inference.slice_bounds(size, slices) == expected


class MeetingHandler(FakeHandler):
  """Every call waits until `parties` calls are inside run_inference at once: a sliced batch
  passes only if its slices really run at the same time."""

  def __init__(self, parties: int):
    super().__init__()
    self.barrier = threading.Barrier(parties, timeout=10)
    self.threads = set()

  def run_inference(self, batch, model, inference_args=None):
    self.threads.add(threading.get_ident())
    self.barrier.wait()
    return super().run_inference(batch, model, inference_args)


def test_slices_run_at_the_same_time_and_keep_the_batch_order():
  fake = MeetingHandler(parties=3)
  handler = inference.IsolatingModelHandler(base.KeyedModelHandler(fake), slices=3)
  batch = [(f"k{i}", str(i).encode()) for i in range(8)]
  results = handler.run_inference(batch, handler.load_model())
  assert results == [(f"k{i}", str(i).encode() * 2) for i in range(8)]
  assert sorted(len(b) for b in fake.batches) == [2, 3, 3]
  assert len(fake.threads) == 3


def test_a_bad_image_fails_alone_inside_its_slice():
  fake = FakeHandler()
  handler = inference.IsolatingModelHandler(base.KeyedModelHandler(fake), slices=2)
  batch = [("a", b"1"), ("b", b"2"), ("c", b"bad"), ("d", b"4")]
  results = handler.run_inference(batch, handler.load_model())
  assert [key for key, _ in results] == ["a", "b", "c", "d"]
  assert dict(results)["c"].stage == elements.STAGE_DECODE
  assert [r for _, r in results if not isinstance(r, inference.InferenceFailure)] == [
    b"11",
    b"22",
    b"44",
  ]
  # The good slice ran once; the bad one once whole, then one call per image.
  assert sorted(len(b) for b in fake.batches) == [1, 1, 2, 2]


def test_slices_must_be_positive():
  with pytest.raises(ValueError, match="at least 1"):
    inference.IsolatingModelHandler(base.KeyedModelHandler(FakeHandler()), slices=0)


def test_batch_size_is_fixed_and_bounded(tiny_export):
  export_dir, _ = tiny_export
  for name in constants.HANDLERS:
    handler = inference.create_handler(name, export_dir, max_batch_size=7)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 7, "max_batch_size": 7}


def test_both_handlers_give_the_same_arrays(tiny_export):
  export_dir, _ = tiny_export
  batch = [
    (f"k{i}", synthetic.encode(synthetic.pet_scene(20 + i, 30, i)[0], "PNG")) for i in range(3)
  ] + [("broken", b"\xff\xd8\xff\xe0 not really a jpeg")]
  outputs = {}
  for name in constants.HANDLERS:
    # Through Beam's pickler as a worker gets it; creating it reads nothing, loading counts.
    loads_before = inference.loads_in_this_process()
    handler = pickler.loads(
      pickler.dumps(inference.create_handler(name, export_dir, max_batch_size=8))
    )
    assert inference.loads_in_this_process() == loads_before
    results = dict(handler.run_inference(batch, handler.load_model()))
    assert inference.loads_in_this_process() == loads_before + 1
    assert results["broken"].stage == elements.STAGE_DECODE
    outputs[name] = {k: inference.outputs_as_arrays(v) for k, v in results.items() if k != "broken"}
  tfx, direct = outputs[constants.HANDLER_TFX_BSL], outputs[constants.HANDLER_SAVED_MODEL]
  for key in ("k0", "k1", "k2"):
    assert int(direct[key]["width"]) == 20 + int(key[1]) and int(direct[key]["height"]) == 30
    for output in ("probabilities", "height", "width"):
      np.testing.assert_allclose(tfx[key][output], direct[key][output], atol=1e-6)


def test_creating_a_handler_reads_no_model():
  """The launcher builds handlers; only workers read the model (possibly from gs://)."""
  for name in constants.HANDLERS:
    handler = inference.create_handler(name, "gs://no-such-bucket/model", max_batch_size=4)
    assert handler.get_metrics_namespace() == constants.METRICS_NAMESPACE


def test_unknown_handler():
  with pytest.raises(ValueError, match="unknown inference handler"):
    inference.create_handler("onnx", "/nowhere", max_batch_size=1)


def test_a_failure_names_the_problem_not_the_graph_node():
  error = ValueError(
    "Graph execution error: jpeg::Uncompress failed. Invalid JPEG data. "
    "[[{{node map/while/body/_1/DecodeJpeg}}]] [Op:__inference_serve_9]"
  )
  failure = inference._failure_for(error)
  assert failure.stage == "decode" and failure.error_type == "ValueError"
  assert "jpeg::Uncompress failed" in failure.message and "node map" not in failure.message


def test_segbeam_turns_onednn_on_unless_told_otherwise():
  script = "import os, segbeam; print(os.environ['TF_ENABLE_ONEDNN_OPTS'])"
  environment = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
  assert (
    subprocess.run(
      [sys.executable, "-c", script], env=environment, capture_output=True, text=True, check=True
    ).stdout.strip()
    == "1"
  )
  environment["TF_ENABLE_ONEDNN_OPTS"] = "0"
  assert (
    subprocess.run(
      [sys.executable, "-c", script], env=environment, capture_output=True, text=True, check=True
    ).stdout.strip()
    == "0"
  )


def test_each_calling_thread_has_its_own_slice_threads():
  # Two harness threads with two slices each: all four slices meet at once, so the second
  # slices of the two threads did not wait for one shared slice thread.
  fake = MeetingHandler(parties=4)
  handler = inference.IsolatingModelHandler(base.KeyedModelHandler(fake), slices=2)
  results = {}

  def harness_thread(name):
    results[name] = handler.run_inference([(f"{name}{i}", b"1") for i in range(2)], "model")

  threads = [threading.Thread(target=harness_thread, args=(name,)) for name in "ab"]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert results == {name: [(f"{name}0", b"11"), (f"{name}1", b"11")] for name in "ab"}
  assert len(fake.threads) == 4


class GatedHandler(FakeHandler):
  """Infers only once `gate` is set: shows whether the caller got its results before then."""

  def __init__(self):
    super().__init__()
    self.gate = threading.Event()

  def run_inference(self, batch, model, inference_args=None):
    assert self.gate.wait(timeout=10)
    return super().run_inference(batch, model, inference_args)


def test_with_overlap_the_call_returns_before_the_batch_is_inferred():
  fake = GatedHandler()
  handler = inference.IsolatingModelHandler(base.KeyedModelHandler(fake), slices=2, overlap=True)
  batch = [("a", b"1"), ("b", b"bad"), ("c", b"3"), ("d", b"4"), ("e", b"5")]
  results = handler.run_inference(batch, handler.load_model())
  assert not fake.batches  # nothing inferred yet: the caller is free to read the next batch
  assert [key for key, _ in results] == ["a", "b", "c", "d", "e"]
  assert all(isinstance(r, inference.PendingInference) for _, r in results)
  fake.gate.set()
  resolved = {key: inference.resolve(r) for key, r in results}
  assert resolved["b"].stage == elements.STAGE_DECODE  # still isolated inside its slice
  assert {k: v for k, v in resolved.items() if k != "b"} == {
    "a": b"11",
    "c": b"33",
    "d": b"44",
    "e": b"55",
  }
  assert sorted(len(b) for b in fake.batches) == [1, 1, 2, 3]  # (a, bad) retried one by one


def test_overlapped_slices_run_at_the_same_time_off_the_calling_thread():
  fake = MeetingHandler(parties=2)
  handler = inference.IsolatingModelHandler(base.KeyedModelHandler(fake), slices=2, overlap=True)
  results = handler.run_inference([("a", b"1"), ("b", b"2")], "model")
  assert [inference.resolve(r) for _, r in results] == [b"11", b"22"]
  assert threading.get_ident() not in fake.threads and len(fake.threads) == 2


def test_a_pending_inference_pickles_as_its_result():
  handler = inference.IsolatingModelHandler(base.KeyedModelHandler(FakeHandler()), overlap=True)
  [(_, pending)] = handler.run_inference([("a", b"7")], "model")
  assert pickler.loads(pickler.dumps(pending)) == b"77"
  assert inference.resolve(b"already there") == b"already there"
