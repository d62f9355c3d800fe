"""deploy/: the worker image's versions agree with segbeam/versions.py, the Flex Template spec with
`segbeam run`'s options. Docker is not available here, so the Dockerfile is read, not built."""

import argparse
import ast
import json
import os
import re

import pytest
from packaging.specifiers import SpecifierSet

from segbeam import versions
from segbeam.pipeline import flex_template
from segbeam.pipeline import launcher
from segbeam.pipeline import options as options_lib
from segbeam.pipeline import submit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SETUP_PY = os.path.join(ROOT, "setup.py")
DOCKERFILE = os.path.join(ROOT, "deploy", "Dockerfile")
METADATA = os.path.join(ROOT, "deploy", "metadata.json")


def _read(path):
  with open(path, encoding="utf-8") as f:
    return f.read()


def setup_pins(setup_text):
  """The image's versions (segbeam/versions.py, which setup.py reads) and setup.py's
  python_requires."""
  pins = {name: value for name, value in vars(versions).items() if name.endswith("_VERSION")}
  tree = ast.parse(setup_text)
  for node in ast.walk(tree):
    if isinstance(node, ast.keyword) and node.arg == "python_requires":
      pins["python_requires"] = node.value.value
  return pins


def dockerfile_instructions(text):
  """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
  lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
  joined = re.sub(r"\\\n", "", "\n".join(lines))
  return [
    (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
    for line in joined.splitlines()
    if line.strip()
  ]


def dockerfile_args(instructions):
  """The global ARGs (before the first FROM) with their defaults."""
  args = {}
  for name, value in instructions:
    if name == "FROM":
      break
    if name == "ARG" and "=" in value:
      key, default = value.split("=", 1)
      args[key.strip()] = default.strip()
  return args


def substitute(text, args):
  return re.sub(
    r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text
  )


def version_mismatches(setup_text, dockerfile_text):
  """Every way the Dockerfile's versions disagree with setup.py's, as readable lines."""
  pins = setup_pins(setup_text)
  instructions = dockerfile_instructions(dockerfile_text)
  args = dockerfile_args(instructions)
  python = args.get("PYTHON_VERSION", "")
  problems = []
  if python != pins.get("PYTHON_VERSION"):
    problems.append(
      f"ARG PYTHON_VERSION={python} but segbeam/versions.py has {pins.get('PYTHON_VERSION')}"
    )
  for name in ("BEAM_VERSION", "TENSORFLOW_VERSION"):
    if args.get(name) != pins.get(name):
      problems.append(f"ARG {name}={args.get(name)} but segbeam/versions.py has {pins.get(name)}")
  if not python or python + ".0" not in SpecifierSet(pins.get("python_requires", "")):
    problems.append(
      f"ARG PYTHON_VERSION={python} outside python_requires {pins.get('python_requires')}"
    )
  resolved = [substitute(value, args) for _, value in instructions]
  sdk_images = [
    m.groups()
    for line in resolved
    for m in re.finditer(r"apache/beam_python([\d.]+)_sdk:(\S+)", line)
  ]
  if not sdk_images:
    problems.append("no apache/beam_python*_sdk image")
  for sdk_python, tag in sdk_images:
    if tag != pins.get("BEAM_VERSION") or sdk_python != python:
      problems.append(
        f"Beam SDK image for Python {sdk_python}, Beam {tag}; segbeam/versions.py pins Beam "
        f"{pins.get('BEAM_VERSION')}, the image Python {python}"
      )
  for launcher_python in re.findall(r"python(\d)(\d+)-template-launcher-base", dockerfile_text):
    if ".".join(launcher_python) != python:
      problems.append(f"template launcher for Python {'.'.join(launcher_python)}, not {python}")
  for base in re.findall(
    r"^python:(\S+)",
    "\n".join(value for (name, _), value in zip(instructions, resolved) if name == "FROM"),
    re.M,
  ):
    if not base.startswith(python + "-") and base != python:
      problems.append(f"base image python:{base} is not Python {python}")
  for package, pin in (("tensorflow", "TENSORFLOW_VERSION"), ("apache-beam", "BEAM_VERSION")):
    for version in re.findall(rf"\b{package}(?:\[[\w,-]+\])?==([\w.]+)", "\n".join(resolved)):
      if version != pins.get(pin):
        problems.append(
          f"pip installs {package}=={version}, segbeam/versions.py pins {pins.get(pin)}"
        )
  return problems


def test_setup_py_installs_the_image_versions():
  text = _read(SETUP_PY)
  assert 'f"apache-beam[gcp]=={BEAM_VERSION}"' in text
  assert 'f"tensorflow=={TENSORFLOW_VERSION}"' in text
  assert '_VERSIONS["BEAM_VERSION"]' in text and '_VERSIONS["TENSORFLOW_VERSION"]' in text


def test_dockerfile_versions_agree_with_setup_py():
  assert version_mismatches(_read(SETUP_PY), _read(DOCKERFILE)) == []


@pytest.mark.parametrize(
  "change",
  [
    ("ARG BEAM_VERSION=", "ARG BEAM_VERSION=9"),
    ("ARG TENSORFLOW_VERSION=", "ARG TENSORFLOW_VERSION=9"),
    ("ARG PYTHON_VERSION=3.11", "ARG PYTHON_VERSION=3.12"),
    ("_sdk:${BEAM_VERSION}", "_sdk:2.0.0"),
    ("apache/beam_python${PYTHON_VERSION}_sdk", "apache/beam_python3.12_sdk"),
    ("python311-template-launcher-base", "python312-template-launcher-base"),
    ("tensorflow[and-cuda]==${TENSORFLOW_VERSION}", "tensorflow[and-cuda]==2.0.0"),
  ],
)
def test_a_changed_version_is_caught(change):
  """The check itself: each way of letting one file drift from the other is reported."""
  old, new = change
  dockerfile = _read(DOCKERFILE)
  assert old in dockerfile
  assert version_mismatches(_read(SETUP_PY), dockerfile.replace(old, new))


def test_image_is_a_beam_worker_and_a_flex_template_launcher():
  instructions = dockerfile_instructions(_read(DOCKERFILE))
  values = dict(instructions)  # the last of each instruction
  assert json.loads(values["ENTRYPOINT"]) == ["/opt/apache/beam/boot"]
  copies = [value.split() for name, value in instructions if name == "COPY"]
  assert ["--from=beam_sdk", "/opt/apache/beam", "/opt/apache/beam"] in copies
  launcher_binary = "/opt/google/dataflow/python_template_launcher"
  assert ["--from=template_launcher", launcher_binary, launcher_binary] in copies
  entry = dict(re.findall(r"(\w+)=(\S+)", " ".join(v for n, v in instructions if n == "ENV")))
  assert ["deploy/main.py", entry["FLEX_TEMPLATE_PYTHON_PY_FILE"]] in copies
  assert os.path.exists(os.path.join(ROOT, "deploy", "main.py"))
  runs = " ".join(value for name, value in instructions if name == "RUN")
  assert "pip check" in runs
  # segbeam submit without --model sends the workers to this path.
  assert f"{submit.IMAGE_DEFAULT_MODEL_DIR}" in runs and "ln -s" in runs


def _spec():
  with open(METADATA, encoding="utf-8") as f:
    return json.load(f)


def _example(parameter):
  match = re.search(r"Example: (\S+)$", parameter["helpText"])
  assert match, f"{parameter['name']}: helpText ends without 'Example: VALUE'"
  return match.group(1)


def test_flex_template_spec_is_complete():
  spec = _spec()
  assert spec["name"] and spec["description"]
  names = [parameter["name"] for parameter in spec["parameters"]]
  assert len(names) == len(set(names))
  for parameter in spec["parameters"]:
    assert parameter["label"] and parameter["helpText"]
    assert isinstance(parameter["isOptional"], bool)
    assert parameter["regexes"]
  parser = argparse.ArgumentParser()
  options_lib.add_arguments(parser)
  actions = parser._actions  # pylint: disable=protected-access  # argparse keeps no public list
  required = {action.option_strings[0] for action in actions if action.required}
  assert {"--" + p["name"] for p in spec["parameters"] if not p["isOptional"]} == required


def test_every_parameter_is_a_segbeam_run_option_whose_regexes_match_its_example():
  options = flex_template.run_options()
  argv = []
  for parameter in _spec()["parameters"]:
    example = _example(parameter)
    for regex in parameter["regexes"]:
      assert re.fullmatch(regex, example), (parameter["name"], regex, example)
    if parameter["name"] in flex_template.GPU_PARAMETERS:  # the template's own, not run's
      continue
    option = "--" + parameter["name"].replace("_", "-")
    assert option in options, f"{parameter['name']} is not a segbeam run option"
    argv.append(f"--{parameter['name']}={example}")
  # As the template launcher passes them: every one is taken by segbeam run, none left to Beam.
  run_options, beam_args = launcher.parse(flex_template.template_argv(argv))
  assert beam_args == []
  assert run_options.batch_size == 64 and run_options.mask_files and run_options.overwrite
  assert run_options.model_dir == "gs://my-bucket/models/pets-v2"
  assert run_options.handler == "saved-model" and run_options.input_format == "tfrecord"


def test_regexes_refuse_what_dataflow_cannot_use():
  by_name = {p["name"]: p["regexes"] for p in _spec()["parameters"]}
  refused = {
    "input": "photos/*.jpg",
    "output": "/tmp/out",
    "model": "runs/export",
    "batch_size": "0",
    "mask_files": "yes",
    "input_format": "png",
    "inference_handler": "onnx",
    "gpu_type": "nvidia-a100",
    "gpu_sharing": "two",
  }
  for name, value in refused.items():
    assert not any(re.fullmatch(regex, value) for regex in by_name[name]), (name, value)


CUDA_WHEELS = os.path.join(ROOT, "deploy", "cuda-wheels.txt")


def test_cuda_wheels_are_pinned_to_what_tensorflow_was_built_with():
  """deploy/cuda-wheels.txt pins every wheel of TensorFlow's `and-cuda` extra at the lower
  bound TensorFlow's own metadata gives it (its build's versions), and nothing else."""
  from importlib import metadata

  from packaging.requirements import Requirement

  assert metadata.version("tensorflow") == versions.TENSORFLOW_VERSION
  tested = {}
  for text in metadata.requires("tensorflow"):
    requirement = Requirement(text)
    if requirement.marker and requirement.marker.evaluate({"extra": "and-cuda"}):
      lower = [spec.version for spec in requirement.specifier if spec.operator == ">="]
      assert len(lower) == 1, text
      tested[requirement.name] = lower[0]
  pinned = dict(
    line.split("==")
    for line in _read(CUDA_WHEELS).splitlines()
    if line.strip() and not line.startswith("#")
  )
  assert tested and pinned == tested


def test_the_image_installs_the_pinned_wheels_from_a_dated_launcher():
  instructions = dockerfile_instructions(_read(DOCKERFILE))
  runs = [value for name, value in instructions if name == "RUN"]
  assert any(
    "tensorflow[and-cuda]==" in run and "-c /tmp/segbeam/cuda-wheels.txt" in run for run in runs
  )
  assert ("COPY", "deploy/cuda-wheels.txt /tmp/segbeam/cuda-wheels.txt") in instructions
  assert re.fullmatch(
    r"\d{8}[_-][Rr][Cc]\d\d", dockerfile_args(instructions)["TEMPLATE_LAUNCHER_TAG"]
  )
