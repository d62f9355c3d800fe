"""Where `segbeam run`'s wall time goes: start-up, the inference phase, the end; in ONE run.

Runs `segbeam run` (tfx-bsl's handler, the default) over --images of the photos of
../shared/data/oxford-pets-sample, repeated by symbolic links, in a child process that is the
console script with timestamps added, and prints:
  - when each part of start-up began: importing TensorFlow, Beam, the run command and tfx-bsl,
    `Pipeline.run`, the first slice handed to the model;
  - the inference phase, from the first slice handed to the model to the last one back: its
    rate, and per 2-second window how much of the time at least one slice, and two, were being
    inferred (the model kept busy or not);
  - the end, from the last slice back to the exit (Parquet closed, manifest, report);
and, with the forward pass alone (bench/throughput.py's (a)) measured right before and after on
the same photos, the decomposition (c)/(a) = 1 / (1/s + F * R / N): s the inference phase's
rate over (a)'s rate R, F the seconds outside the inference phase, N the images.

  python bench/start_timeline.py [--images 1800]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time

_CHILD_FLAG = "--as-timed-child"
_IMPORTS_TIMED = ("tensorflow", "apache_beam", "segbeam.commands.run", "tfx_bsl")


def timed_child(events_path: str, run_argv: list[str]) -> None:
  """`segbeam run` as the console script runs it (collector paused, TensorFlow first), with the
  start of chosen imports, `Pipeline.run` and every slice's inference timestamped."""
  start = time.monotonic()
  gc.disable()
  marks: dict[str, float] = {}
  slices: list[tuple[float, float, int]] = []
  patched = []

  def now() -> float:
    return time.monotonic() - start

  def patch() -> None:
    # only once the run has imported them itself
    import apache_beam as beam

    from segbeam.pipeline import inference

    run_isolated = inference.IsolatingModelHandler._run_isolated

    def timed_run_isolated(handler, batch, model, inference_args):
      began = now()
      results = run_isolated(handler, batch, model, inference_args)
      slices.append((began, now(), len(batch)))
      return results

    inference.IsolatingModelHandler._run_isolated = timed_run_isolated
    pipeline_run = beam.Pipeline.run

    def timed_pipeline_run(pipeline, *args, **kwargs):
      marks.setdefault("Pipeline.run", now())
      return pipeline_run(pipeline, *args, **kwargs)

    beam.Pipeline.run = timed_pipeline_run

  def on_audit_event(event: str, args: tuple) -> None:
    if event != "import":
      return
    if args[0] in _IMPORTS_TIMED:
      marks.setdefault(f"import {args[0]}", now())
    # Patched at the first import after segbeam's inference module has been executed, so that
    # the run imports everything in its own order.
    module = sys.modules.get("segbeam.pipeline.inference")
    if not patched and module is not None and hasattr(module, "IsolatingModelHandler"):
      patched.append(True)
      patch()

  sys.addaudithook(on_audit_event)
  from segbeam import startup

  startup._paused = True
  from segbeam import cli

  code = cli.main(["run", *run_argv])
  marks["exit"] = now()
  with open(events_path, "w") as f:
    json.dump({"code": code, "marks": marks, "slices": slices}, f)
  sys.stdout.flush()
  os._exit(0)  # as the console script leaves: no interpreter teardown


def occupancy(
  slices: list[tuple[float, float, int]], since: float, until: float, step: float = 0.005
) -> tuple[float, float]:
  """Fractions of [since, until) with at least one slice being inferred, and with two."""
  samples = one = two = 0
  moment = since
  while moment < until:
    in_flight = sum(1 for began, ended, _ in slices if began <= moment < ended)
    one += in_flight >= 1
    two += in_flight >= 2
    samples += 1
    moment += step
  return one / max(samples, 1), two / max(samples, 1)


def report(events: dict, images: int, forward_img_s: float | None) -> None:
  marks, slices = events["marks"], sorted(events["slices"])
  first_in, last_out = slices[0][0], max(ended for _, ended, _ in slices)
  print("start-up (seconds since the process began):")
  for name, at in sorted(marks.items(), key=lambda item: item[1]):
    if name != "exit":
      print(f"  {at:6.2f}  {name} began")
  print(f"  {first_in:6.2f}  first slice handed to the model")
  phase = last_out - first_in
  rate = images / phase
  print(
    f"inference phase: {images} images in {len(slices)} slices, {phase:.1f} s, {rate:.1f} img/s"
  )
  window = 2.0
  moment = first_in
  while moment < last_out:
    until = min(moment + window, last_out)
    one, two = occupancy(slices, moment, until)
    done = sum(n for _, ended, n in slices if moment <= ended < until)
    print(
      f"  {moment:6.1f}-{until:5.1f} s  slices in flight: >=1 {one:4.0%}, 2 {two:4.0%};"
      f"  {done:3d} images back"
    )
    moment = until
  one, two = occupancy(slices, first_in, last_out)
  print(f"  whole phase: >=1 in flight {one:.1%}, 2 in flight {two:.1%}")
  end = marks["exit"] - last_out
  fixed = first_in + end
  print(f"end: {end:.2f} s from the last slice back to the exit")
  print(
    f"whole run {marks['exit']:.1f} s = start {first_in:.1f} + inference {phase:.1f} + end "
    f"{end:.2f}; {images / marks['exit']:.1f} img/s"
  )
  if forward_img_s:
    s = rate / forward_img_s
    print(
      f"(a) forward alone {forward_img_s:.1f} img/s: inference phase s = {s:.2f} of (a); "
      f"F = {fixed:.1f} s; (c)/(a) = 1 / (1/s + F R / N) = "
      f"{1 / (1 / s + fixed * forward_img_s / images):.2f}"
    )
    for target_n in (4_500, 45_000):
      print(
        f"  the same s and F at N = {target_n}: (c)/(a) = "
        f"{1 / (1 / s + fixed * forward_img_s / target_n):.2f}"
      )


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0] == _CHILD_FLAG:
    timed_child(argv[1], argv[2:])
    return 0
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", type=int, default=1800)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument(
    "--skip-forward", action="store_true", help="do not measure (a) before and after"
  )
  parser.add_argument("--photos", default=None, help="default: the shared sample's images")
  args = parser.parse_args(argv)
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import throughput  # bench/ is not a package

  from segbeam.model import defaults

  model_dir = defaults.default_model_dir()
  with tempfile.TemporaryDirectory(prefix="segbeam-timeline-") as work:
    paths = throughput.make_inputs(
      args.photos or throughput.SHARED, args.images, os.path.join(work, "images")
    )
    forward = []
    if not args.skip_forward:
      forward.append(throughput.forward_alone(model_dir, paths, args.batch_size, 1).img_s)
    events_path = os.path.join(work, "events.json")
    run_argv = throughput.segbeam_run_argv(
      model_dir, os.path.join(work, "images"), os.path.join(work, "out"), args.batch_size
    )[2:]
    log_path = os.path.join(work, "run.log")
    with open(log_path, "w") as log:
      child = subprocess.run(
        [sys.executable, os.path.abspath(__file__), _CHILD_FLAG, events_path, *run_argv],
        stdout=log,
        stderr=subprocess.STDOUT,
      )
    if child.returncode != 0 or not os.path.exists(events_path):
      with open(log_path) as log:
        sys.stderr.write(log.read()[-3000:])
      raise RuntimeError(f"the timed segbeam run failed ({child.returncode})")
    if not args.skip_forward:
      forward.append(throughput.forward_alone(model_dir, paths, args.batch_size, 1).img_s)
      print(f"(a) forward alone, before and after: {forward[0]:.1f}, {forward[1]:.1f} img/s")
    with open(events_path) as f:
      events = json.load(f)
    if events["code"] != 0:
      raise RuntimeError(f"segbeam run exited {events['code']}")
    report(events, len(paths), sum(forward) / len(forward) if forward else None)
  return 0


if __name__ == "__main__":
  sys.exit(main())
