"""Where a `segbeam run`'s CPU per image goes, stage by stage, each stage timed on its own.

Each of the pipeline's stages runs alone in this process over the same photos, in the order a
run does them, with the real code (`validation.validate`, the export's serving signature, the
handlers, `rows.segments_row`, Beam's Parquet conversion and writer), and is timed two ways:
the CPU time of all threads (`time.process_time`: TensorFlow's own threads included) and of
the calling thread alone (`time.thread_time`: for pure-Python or numpy stages, an upper bound
on the time the stage holds Python's GIL, since large numpy operations, zlib and file reads
let go of it; `bench/gil_profile.py` measures the GIL itself). Per image, in ms. The serving
graph's parts are timed cumulatively in batches as the handlers call them: decode alone,
decode + resize, the whole signature; and the network alone on resized pixels.
--tf-threads 1 keeps TensorFlow's idle threads from spinning into the CPU figures.

Beam's own cost per element and per DoFn comes from a pipeline of identity Maps on the same
runner `segbeam run` uses (`beam_options.DEFAULT_LOCAL_RUNNER`): 1 and 11 Maps over the
same elements, differenced, so creating and counting the elements drops out.

The model: --model (an export; the embedded default when omitted) or --null, the null model of
`bench/null_model.py` (one 1x1 convolution), whose outputs cost the mask stage more than a
trained model's (`bench/null_model.py`'s docstring says why).

  python bench/stage_costs.py [--null] [--tf-threads 1] [--images 450] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import throughput  # the bench's inputs


class Stages:
  """Times stages and prints one line each: ms per image of all threads and of this thread."""

  def __init__(self, images: int):
    self.images = images

  def time(self, name: str, work: Callable[[], object]) -> object:
    cpu, thread = time.process_time(), time.thread_time()
    result = work()
    cpu, thread = time.process_time() - cpu, time.thread_time() - thread
    self.add(name, 1000 * cpu / self.images, 1000 * thread / self.images)
    return result

  def add(self, name: str, cpu_ms: float, thread_ms: float) -> None:
    print(f"| {name} | {cpu_ms:.3f} | {thread_ms:.3f} |", flush=True)


def beam_cost_per_element(elements: int) -> tuple[float, float]:
  """(CPU ms of one identity Map per element, CPU ms per element of a pipeline's source and
  sink) on segbeam's local runner, from pipelines of 1 and 11 Maps."""
  import apache_beam as beam

  from segbeam.run import beam_options

  def run(maps: int) -> float:
    options = beam_options.pipeline_options([])
    start = time.process_time()
    with beam.Pipeline(options=options) as pipeline:
      values = pipeline | beam.Create(range(elements), reshuffle=False)
      for i in range(maps):
        values = values | f"Map{i}" >> beam.Map(lambda x: x)
      _ = values | beam.combiners.Count.Globally()
    return time.process_time() - start

  run(1)  # warm-up: imports, the runner's first pipeline
  one, eleven = run(1), run(11)
  per_map = 1000 * (eleven - one) / (10 * elements)
  return per_map, 1000 * one / elements - per_map


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", type=int, default=450)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--photos", default=throughput.SHARED)
  parser.add_argument("--model", help="an export; the embedded default when omitted")
  parser.add_argument("--null", action="store_true", help="the null model of bench/null_model.py")
  parser.add_argument("--beam-elements", type=int, default=20000)
  parser.add_argument(
    "--tf-threads",
    type=int,
    help="TensorFlow's intra- and inter-op threads (1: its CPU time without idle spinning)",
  )
  args = parser.parse_args(argv)

  import pyarrow.parquet as pq
  from apache_beam.io import parquetio
  from apache_beam.io.filesystems import FileSystems
  from apache_beam.transforms import window

  from segbeam.model import contract
  from segbeam.model import defaults
  from segbeam.model import export
  from segbeam.model import postprocess
  from segbeam.model import preprocessing
  from segbeam.pipeline import elements
  from segbeam.pipeline import inference
  from segbeam.pipeline import mask_png
  from segbeam.pipeline import rows as rows_lib
  from segbeam.pipeline import schema
  from segbeam.pipeline import transforms
  from segbeam.pipeline import validation

  if args.tf_threads:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.tf_threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.tf_threads)
  work = tempfile.mkdtemp(prefix="segbeam-stages-")
  model_dir = args.model or defaults.default_model_dir()
  if args.null:
    import null_model

    model_dir = os.path.join(work, "null-export")
    null_model.write_null_export(model_dir)
  paths = throughput.make_inputs(args.photos, args.images, os.path.join(work, "images"))
  metadata = contract.read_metadata(model_dir)
  serving = metadata.serving_config
  loaded = export.LoadedExport(model_dir)
  tfx = inference.TfxBslHandler(model_dir, max_batch_size=args.batch_size).load_model()
  batches = [
    range(i, min(i + args.batch_size, len(paths))) for i in range(0, len(paths), args.batch_size)
  ]

  machine = throughput.cpu_model()
  print(f"machine: {machine}, {os.cpu_count()} cores; model {metadata.name}; {len(paths)} photos")
  print("\n| stage | CPU ms per image, all threads | calling thread (at most the GIL held) |")
  print("| --- | --- | --- |")
  stages = Stages(len(paths))

  def read():
    out = []
    for path in paths:
      with FileSystems.open(path) as f:
        out.append(f.read())
    return out

  data = stages.time("read (Beam's FileSystems)", read)
  records = [elements.ImageRecord(os.path.basename(p), p, d) for p, d in zip(paths, data)]
  validated = stages.time(
    "validate (format, header, EXIF)", lambda: [validation.validate(r) for r in records]
  )
  assert not any(isinstance(v, elements.Failure) for v in validated), "a sample photo failed"
  infos = [v[0] for v in validated]
  encoded = [v[1] for v in validated]
  megapixels = sum(i.width * i.height for i in infos) / 1e6

  import tensorflow as tf

  size = serving.input_height

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
  def decode_only(batch):
    def one(data):
      image, _, _ = preprocessing.decode_for_size(data, serving.channels, size)
      return tf.reduce_sum(tf.cast(image[:1, :1], tf.int32))

    return tf.map_fn(one, batch, fn_output_signature=tf.int32)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
  def decode_resize(batch):
    return preprocessing.decode_and_resize_batch(batch, size, serving.channels, serving.resize)

  def each_batch(fn):
    return lambda: [fn([encoded[i] for i in batch]) for batch in batches]

  for traced in (decode_only, decode_resize):  # trace and warm up
    traced(tf.constant(encoded[:2]))
  loaded.predict(encoded[:2])
  tfx.handler.run_inference(encoded[:2], tfx.session)
  stages.time("graph: decode (DCT-scaled JPEG)", each_batch(lambda b: decode_only(tf.constant(b))))
  stages.time("graph: decode + resize", each_batch(lambda b: decode_resize(tf.constant(b))))
  outputs = stages.time("serving signature (decode, resize, network)", each_batch(loaded.predict))
  predict_pixels = loaded.saved_model.signatures["predict_pixels"]
  pixels = [decode_resize(tf.constant([encoded[i] for i in batch]))[0] for batch in batches]
  predict_pixels(pixels=pixels[0])
  stages.time(
    "network alone (`predict_pixels` on resized pixels)",
    lambda: [predict_pixels(pixels=p) for p in pixels],
  )
  stages.time(
    "tfx-bsl handler (signature + PredictionLogs)",
    each_batch(lambda b: tfx.handler.run_inference(b, tfx.session)),
  )
  logs = [tfx.handler.run_inference([encoded[i] for i in b], tfx.session) for b in batches[:4]]
  flat_logs = [log for batch in logs for log in batch]
  cpu, thread = time.process_time(), time.thread_time()
  for log in flat_logs:
    inference.outputs_as_arrays(log)
  stages.add(
    "PredictionLog -> arrays (tfx-bsl only)",
    1000 * (time.process_time() - cpu) / len(flat_logs),
    1000 * (time.thread_time() - thread) / len(flat_logs),
  )
  per_image = stages.time(
    "batch outputs -> one dict per image (saved-model handler)",
    lambda: [
      {name: value[i] for name, value in batch.items()}
      for batch in outputs
      for i in range(len(next(iter(batch.values()))))
    ],
  )
  context = rows_lib.RunContext(
    metadata.name,
    metadata.version,
    metadata.class_names,
    "bench",
    transforms.label_map_for(None, metadata),
    mask_threshold=metadata.mask_threshold,
  )

  def mask(o):
    return postprocess.class_mask(
      o[contract.OUTPUT_PROBABILITIES],
      o[contract.OUTPUT_HEIGHT],
      o[contract.OUTPUT_WIDTH],
      threshold=context.mask_threshold,
    )

  masks = stages.time("mask at the original size", lambda: [mask(o)[0] for o in per_image])
  stages.time("mask PNG", lambda: [mask_png.encode(m) for m in masks])
  classes = len(metadata.class_names)
  stages.time(
    "coverage counts", lambda: [postprocess.class_pixel_counts(m, classes) for m in masks]
  )
  rows = stages.time(
    "segments_row, all of it (mask, PNG, counts, the dict)",
    lambda: [rows_lib.segments_row(i, o, context) for i, o in zip(infos, per_image)],
  )
  segments_schema = schema.segments_schema(metadata.class_names)

  def parquet():
    to_table = parquetio._RowDictionariesToArrowTable(
      segments_schema, transforms.SEGMENTS_ROW_GROUP_BYTES
    )
    tables = [t for row in rows for t in to_table.process(row, w=window.GlobalWindow())]
    tables += [t.value for t in to_table.finish_bundle()]
    sink = io.BytesIO()
    with pq.ParquetWriter(sink, segments_schema, compression="zstd") as writer:
      for table in tables:
        writer.write_table(table)
    return sink.tell()

  parquet_bytes = stages.time("Parquet (Beam's row -> Arrow conversion, zstd writer)", parquet)
  per_map, source_sink = beam_cost_per_element(args.beam_elements)
  stages.add(f"Beam, one DoFn per element ({segbeam_runner()})", per_map, per_map)
  print(
    f"\n{megapixels:.1f} MP in all ({1000 * megapixels / len(paths):.0f} kP per photo); "
    f"Parquet {parquet_bytes / len(paths) / 1024:.1f} KiB per row; "
    f"a Beam pipeline's source and count: {source_sink:.3f} ms per element"
  )
  return 0


def segbeam_runner() -> str:
  from segbeam.run import beam_options

  return beam_options.DEFAULT_LOCAL_RUNNER


if __name__ == "__main__":
  sys.exit(main())
