"""Model handlers: a fake to pin the isolation logic, the real export for both handlers."""

import collections
import operator
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from apache_beam.internal import pickler
from apache_beam.ml.inference import base

from segbeam import constants
from segbeam import options as options_lib
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
  failure = inference._failure_for(error, b"\xff\xd8\xff\xe0 cut short")
  assert failure.stage == "decode" and failure.error_type == "ValueError"
  assert "jpeg::Uncompress failed" in failure.message and "node map" not in failure.message


def test_an_image_that_decodes_but_fails_in_the_model_fails_at_infer():
  """What the model raises does not say where: an invalid argument may come from a decode op
  or from the model's own checks (CheckNumerics). Whether the bytes decode does."""
  error = ValueError("Graph execution error: Tensor had Inf values [[{{node CheckNumerics}}]]")
  photo = synthetic.encode(synthetic.pet_scene(20, 16, 0)[0], "JPEG")
  assert inference._failure_for(error, photo) == inference.InferenceFailure(
    elements.STAGE_INFER, "ValueError", "Graph execution error: Tensor had Inf values"
  )
  assert inference._failure_for(error, photo[: len(photo) // 2]).stage == elements.STAGE_DECODE
  # Out of memory is the device's, whatever the bytes.
  assert inference._failure_for(MemoryError("OOM"), b"not an image").stage == elements.STAGE_INFER
  # A model names its own nodes and writes its own messages: they say nothing of the image.
  named = ValueError("Tensor had Inf values [[{{node head/DecodeJpeg}}]] {{node DecodeJpeg}}")
  assert inference._failure_for(named, photo).stage == elements.STAGE_INFER


def _with_sampling_factors(jpeg: bytes, h: int, v: int) -> bytes:
  """`jpeg` (baseline) with its first component's sampling factors set to h x v in its header."""
  data = bytearray(jpeg)
  frame = data.index(b"\xff\xc0")
  data[frame + 11] = (h << 4) | v
  return bytes(data)


def test_a_jpeg_the_graph_cannot_decode_at_some_scale_fails_at_decode():
  """The serving graph decodes a JPEG at a DCT scale its input size picks: bytes any of those
  decodes refuse are the image's fault, not the model's."""
  import io  # noqa: PLC0415

  from PIL import Image  # noqa: PLC0415

  rng = np.random.default_rng(0)
  buffer = io.BytesIO()
  Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(
    buffer, "JPEG", subsampling=0, quality=90
  )
  broken = _with_sampling_factors(buffer.getvalue(), 3, 3)
  error = ValueError("Graph execution error: Sampling factors too large for interleaved scan")
  assert inference._failure_for(error, broken).stage == elements.STAGE_DECODE


PHOTO = synthetic.encode(synthetic.pet_scene(12, 10, 1)[0], "PNG")


class BrokenDeviceHandler(base.ModelHandler):
  """Fails every call holding an image whose key is in `failing` (all keys where None), as a
  device that cannot run the model does; `calls` counts its calls."""

  def __init__(self, failing=None):
    super().__init__()
    self.failing = failing
    self.calls = 0

  def load_model(self):
    return "model"

  def run_inference(self, batch, model, inference_args=None):
    self.calls += 1
    if any(self.failing is None or data in self.failing for data in batch):
      raise RuntimeError("cuDNN failed to initialize")
    return list(batch)


def _photos(count: int, start: int = 0):
  return [(f"k{i}", PHOTO + str(i).encode()) for i in range(start, start + count)]


def _isolating(device, **limits):
  """An isolating handler over `device` with fixed batches of 8 and the breaker's `limits`."""
  device.batch_elements_kwargs = lambda: {"max_batch_size": 8}
  return inference.IsolatingModelHandler(
    base.KeyedModelHandler(device), breaker=options_lib.BreakerLimits(**limits)
  )


def test_the_breaker_stops_after_batches_worth_of_images_in_a_row():
  handler = _isolating(BrokenDeviceHandler(), batches=3)
  for start in (0, 8):
    results = handler.run_inference(_photos(8, start), "model")
    assert [r.stage for _, r in results] == [elements.STAGE_INFER] * 8
  with pytest.raises(elements.ModelFailureError) as raised:
    handler.run_inference(_photos(8, 16), "model")
  message = str(raised.value)
  assert "24 images in a row failed in the model" in message
  assert "(--breaker-batches 3: 24 images)" in message
  assert "24 images failed so, as this one: RuntimeError: cuDNN failed to initialize" in message
  # Every later call of the process's threads stops too, without running the model.
  with pytest.raises(elements.ModelFailureError):
    handler.run_inference(_photos(8, 24), "model")


@pytest.mark.parametrize("call_size", [1, 2, 8])
def test_images_failing_one_by_one_or_among_damaged_files_still_count(call_size):
  """Batches of one (--batch-size 1, slices of one, a runner's small bundles) and damaged files
  mixed in, which fail at decode, neither hide a model failing on every photo."""
  handler = _isolating(BrokenDeviceHandler(), batches=3)
  damaged = [("d1", b"\xff\xd8 cut"), ("d2", b"\x89PNG cut")]
  calls = 0
  with pytest.raises(elements.ModelFailureError, match="24 images in a row"):
    for start in range(0, 100, call_size):
      calls += 1
      handler.run_inference(_photos(call_size, start) + damaged[: calls % 3], "model")
  assert calls == 24 // call_size


def test_the_breaker_stops_on_a_share_of_the_first_images():
  device = BrokenDeviceHandler(failing={PHOTO + str(i).encode() for i in range(0, 100)})
  handler = _isolating(device, batches=0, share=0.25, first_images=40)
  handler.run_inference(_photos(8, 100), "model")  # fine
  handler.run_inference(_photos(8, 0), "model")  # 8 of the first 40 failed
  with pytest.raises(elements.ModelFailureError, match="11 of the first 40 images"):
    handler.run_inference(_photos(3, 8), "model")


def test_a_model_failing_on_most_images_stops_on_the_share_though_some_are_inferred():
  """A device that fails on large images only, or now and then: calls where some image is
  inferred still count towards the share."""
  handler = _isolating(
    BrokenDeviceHandler(failing={PHOTO + str(i).encode() for i in range(200) if i % 8}),
    batches=3,
  )
  with pytest.raises(elements.ModelFailureError, match=r"\d+ of the first 200 images"):
    for start in range(0, 200, 8):
      handler.run_inference(_photos(8, start), "model")


def test_bad_images_never_trip_the_breaker():
  """Images that do not decode, a model failing on a few images, and an image inferred between
  failed ones: none stops the run, every image has its row."""
  particular = {PHOTO + b"1", PHOTO + b"5", PHOTO + b"9"}
  handler = _isolating(
    BrokenDeviceHandler(failing=particular), batches=1, share=0.01, first_images=1000
  )
  results = []
  for start in range(0, 12, 4):
    results += handler.run_inference(_photos(4, start), "model")
  assert [k for k, r in results if isinstance(r, inference.InferenceFailure)] == ["k1", "k5", "k9"]

  corrupt = _isolating(BrokenDeviceHandler(), batches=1, share=0.01, first_images=1000)
  for _ in range(20):  # batches of damaged files that fail at decode
    results = corrupt.run_inference([("a", b"\xff\xd8 cut"), ("b", b"\x89PNG cut")], "model")
    assert [r.stage for _, r in results] == [elements.STAGE_DECODE] * 2

  between = BrokenDeviceHandler(failing=set())
  interrupted = _isolating(between, batches=2, share=1, first_images=1000)
  for _ in range(5):
    between.failing = None
    interrupted.run_inference(_photos(8), "model")  # 8 fail, 16 would stop
    between.failing = set()
    interrupted.run_inference(_photos(1), "model")  # the model runs again: a new count


def test_each_handler_counts_on_its_own():
  """Two runs in one process (tests, notebooks) never share a count; a pickled copy of a
  handler (Beam's threads in one process) shares its own."""
  first = _isolating(BrokenDeviceHandler(), batches=1)  # stops at 8 images in a row
  second = _isolating(BrokenDeviceHandler(), batches=1)
  first.run_inference(_photos(4), "model")
  second.run_inference(_photos(4), "model")
  copy = pickler.loads(pickler.dumps(first))
  with pytest.raises(elements.ModelFailureError, match="8 images in a row"):
    copy.run_inference(_photos(4), "model")


@pytest.mark.parametrize("name", constants.HANDLERS)
def test_the_load_runs_the_probe_image(tmp_path, name):
  import tensorflow as tf  # noqa: PLC0415

  from tests import unsafe_exports  # noqa: PLC0415

  healthy = unsafe_exports.write_export(str(tmp_path / "healthy"))
  broken = unsafe_exports.write_export(
    str(tmp_path / "broken"), fails_when=lambda h, w: tf.ones_like(h, tf.bool)
  )
  inference.create_handler(name, healthy, max_batch_size=4).load_model()
  with pytest.raises(elements.ModelFailureError) as raised:
    inference.create_handler(name, broken, max_batch_size=4).load_model()
  assert "probe image at load" in str(raised.value)
  assert "InvalidArgumentError" in str(raised.value) and "Inf values" in str(raised.value)


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


def _tiles(image: str, count: int, start: int = 0):
  """`count` tiles of `image`, as (key, bytes): the key's `image` names the tile's image."""
  key = collections.namedtuple("Key", "image index")
  return [(key(image, i), PHOTO + f"{image}{i}".encode()) for i in range(start, start + count)]


def _isolating_tiles(device, **limits):
  device.batch_elements_kwargs = lambda: {"max_batch_size": 8}
  return inference.IsolatingModelHandler(
    base.KeyedModelHandler(device),
    breaker=options_lib.BreakerLimits(**limits),
    image_of=operator.attrgetter("image"),
  )


def test_the_breaker_counts_tiles_by_their_image():
  """One image whose every tile fails is one failed image, however many calls its tiles span;
  tiles of many images each failing still stop the run."""
  handler = _isolating_tiles(BrokenDeviceHandler(), batches=3)
  for start in range(0, 200, 8):  # 200 tiles of one image, all failing
    results = handler.run_inference(_tiles("big", 8, start), "model")
    assert all(isinstance(r, inference.InferenceFailure) for _, r in results)
  handler = _isolating_tiles(BrokenDeviceHandler(), batches=3)
  with pytest.raises(elements.ModelFailureError, match="24 images in a row failed"):
    for image in range(100):  # 100 images of 2 tiles, all failing
      handler.run_inference(_tiles(f"i{image}", 2), "model")
