"""deploy/: the worker image's versions agree with segbeam/versions.py, the Flex Template spec with
`segbeam run`'s options; setup.py's dependency ranges agree with constraints.txt, the tested set
CI and the image install. Docker is not available here, so the Dockerfile is read, not built."""

import argparse
import ast
import json
import os
import re
import runpy
import sys
from importlib import metadata
from unittest import mock

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from segbeam import options as options_lib
from segbeam import versions
from segbeam.commands import flex_template
from segbeam.commands import submit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SETUP_PY = os.path.join(ROOT, "setup.py")
DOCKERFILE = os.path.join(ROOT, "deploy", "Dockerfile")
DOCKERIGNORE = os.path.join(ROOT, "deploy", "Dockerfile.dockerignore")
CONSTRAINTS = os.path.join(ROOT, "constraints.txt")
PACKAGE_DIR = os.path.join(ROOT, "segbeam")
METADATA = os.path.join(ROOT, "deploy", "metadata.json")


def _read(path):
  with open(path, encoding="utf-8") as f:
    return f.read()


def setup_pins(setup_text):
  """The image's versions (segbeam/versions.py) and setup.py's python_requires."""
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
  """Every way the Dockerfile's versions disagree with segbeam/versions.py's and setup.py's
  python_requires, as readable lines."""
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
        f"Beam SDK image for Python {sdk_python}, Beam {tag}; segbeam/versions.py "
        f"pins Beam {pins.get('BEAM_VERSION')}, the image Python {python}"
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
    ("apache-beam[gcp]==${BEAM_VERSION}", "apache-beam[gcp]==2.0.0"),
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
  actions = parser._actions  # argparse keeps no public list
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
    if parameter["name"] == "resume":  # its example, true, excludes overwrite's
      assert re.fullmatch(parameter["regexes"][0], "false")
      example = "false"
    argv.append(f"--{parameter['name']}={example}")
  # As the template launcher passes them: every one is taken by segbeam run, none left to Beam.
  run_options, beam_args = options_lib.parse_args(flex_template.template_argv(argv))
  assert beam_args == []
  assert run_options.batch_size == 64 and run_options.mask_files and run_options.overwrite
  assert run_options.model_dir == "gs://my-bucket/models/pets-v2"
  assert run_options.handler == "tfx-bsl" and run_options.input_format == "tfrecord"


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


def test_the_image_installs_the_pinned_wheels_and_a_chosen_launcher():
  instructions = dockerfile_instructions(_read(DOCKERFILE))
  runs = [value for name, value in instructions if name == "RUN"]
  assert any(
    "tensorflow[and-cuda]==" in run and "-c /tmp/segbeam/cuda-wheels.txt" in run for run in runs
  )
  assert ("COPY", "deploy/cuda-wheels.txt /tmp/segbeam/cuda-wheels.txt") in instructions
  # Google's "Flex Templates base images" page recommends `latest`, or a dated tag to pin it;
  # a build argument, so a build chooses (--build-arg TEMPLATE_LAUNCHER_TAG=20260122_RC00).
  tag = dockerfile_args(instructions)["TEMPLATE_LAUNCHER_TAG"]
  assert tag == "latest" or re.fullmatch(r"\d{8}_RC\d\d", tag), tag
  assert tag != "20230622_RC00"  # the 2023 tag the review found
  froms = [value for name, value in instructions if name == "FROM"]
  assert any("-template-launcher-base:${TEMPLATE_LAUNCHER_TAG}" in f for f in froms)


def test_the_image_records_the_code_it_installed_and_its_tag_must_name_it():
  """`segbeam submit` reads the image's code from its tag (versions.image_code_tag): the build
  refuses to make an image whose tag names other code, and writes the code it installed where
  a submit inside the image reads it."""
  text = _read(DOCKERFILE)
  instructions = dockerfile_instructions(text)
  args = [value for name, value in instructions if name == "ARG"]
  assert "SEGBEAM_IMAGE" in args  # declared in the final stage, without a default
  runs = [value for name, value in instructions if name == "RUN"]
  (check,) = [run for run in runs if "segbeam.versions --check-image" in run]
  assert '--check-image "${SEGBEAM_IMAGE}"' in check
  assert f"> {submit.IMAGE_CODE_FILE}" in check
  # After the install: it hashes what was installed, not the build context.
  install = next(i for i, run in enumerate(runs) if "pip install /tmp/segbeam" in run)
  assert runs.index(check) > install
  build = _read(os.path.join(ROOT, "deploy", "cloudbuild.yaml"))
  assert '"--build-arg", "SEGBEAM_IMAGE=${_IMAGE}"' in build


# Dependencies: setup.py declares ranges, as a library does; constraints.txt pins the tested set.


def setup_requirements():
  """setup.py's install_requires and extras_require as setup.py computes them: it is run with
  setuptools.setup replaced, so nothing is built."""
  with mock.patch("setuptools.setup") as setup:
    runpy.run_path(SETUP_PY)
  kwargs = setup.call_args.kwargs
  return list(kwargs["install_requires"]), dict(kwargs["extras_require"])


def constraint_pins(text):
  """{canonical name: Version} of a constraints file whose every line is NAME==VERSION."""
  pins = {}
  for line in text.splitlines():
    line = line.split("#", 1)[0].strip()
    if not line:
      continue
    requirement = Requirement(line)
    specifiers = list(requirement.specifier)
    assert (
      len(specifiers) == 1
      and specifiers[0].operator == "=="
      and not requirement.extras
      and not requirement.marker
    ), f"not NAME==VERSION: {line}"
    name = canonicalize_name(requirement.name)
    assert name not in pins, f"{name} pinned twice"
    pins[name] = Version(specifiers[0].version)
  return pins


def unmet_requirements(requirements, pins):
  """Each requirement that the pinned versions leave unpinned or outside its range."""
  problems = []
  for text in requirements:
    requirement = Requirement(text)
    pinned = pins.get(canonicalize_name(requirement.name))
    if pinned is None:
      problems.append(f"{text}: not pinned in constraints.txt")
    elif not requirement.specifier.contains(pinned, prereleases=True):
      problems.append(f"{text}: constraints.txt pins {pinned}")
  return problems


def pinned_requirements(requirements):
  """The requirements that pin a version (== or ===) instead of declaring a range, or that
  declare no lower bound."""
  problems = []
  for text in requirements:
    operators = {specifier.operator for specifier in Requirement(text).specifier}
    if operators & {"==", "==="} or not operators & {">=", ">", "~="}:
      problems.append(text)
  return problems


def test_setup_py_declares_ranges_not_pins():
  install_requires, extras = setup_requirements()
  assert install_requires and set(extras) >= {"demo", "test", "bench"}
  assert pinned_requirements(install_requires) == []
  assert pinned_requirements(r for requirements in extras.values() for r in requirements) == []


def test_constraints_pin_a_version_in_every_declared_range():
  install_requires, extras = setup_requirements()
  pins = constraint_pins(_read(CONSTRAINTS))
  assert "segbeam" not in pins
  assert unmet_requirements(install_requires, pins) == []
  for extra, requirements in extras.items():
    assert unmet_requirements(requirements, pins) == [], extra


def test_constraints_pin_the_image_versions():
  pins = constraint_pins(_read(CONSTRAINTS))
  assert pins["apache-beam"] == Version(versions.BEAM_VERSION)
  assert pins["tensorflow"] == Version(versions.TENSORFLOW_VERSION)


def test_the_checks_catch_a_pin_and_a_range_the_constraints_miss():
  pins = {"numpy": Version("2.4.6"), "tensorflow": Version("2.21.0")}
  assert unmet_requirements(["numpy>=2,<3", "tensorflow>=2.21,<2.22"], pins) == []
  assert unmet_requirements(["numpy>=2.5", "tensorflow>=2.22,<2.23", "pillow>=12"], pins) == [
    "numpy>=2.5: constraints.txt pins 2.4.6",
    "tensorflow>=2.22,<2.23: constraints.txt pins 2.21.0",
    "pillow>=12: not pinned in constraints.txt",
  ]
  assert pinned_requirements(["numpy==2.4.6", "keras", "pillow<13", "duckdb>=1.1,<3"]) == [
    "numpy==2.4.6",
    "keras",
    "pillow<13",
  ]
  with pytest.raises(AssertionError):
    constraint_pins("numpy>=2\n")


def imports(package_dir):
  """(module, optional, path) for every absolute import in package_dir's .py files; optional when
  the import sits in a `try:` whose handlers catch ImportError (an extra's package)."""
  found = []
  for folder, _, files in os.walk(package_dir):
    for name in sorted(files):
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        found.extend(
          (module, optional, path)
          for module, optional in _imports_under(ast.parse(_read(path), path), False)
        )
  return found


def _imports_under(node, optional):
  """(module, optional) for the absolute imports in node and below."""
  if isinstance(node, ast.Import):
    yield from ((alias.name, optional) for alias in node.names)
  elif isinstance(node, ast.ImportFrom) and node.level == 0:
    yield node.module, optional
  if isinstance(node, ast.Try) and any(_catches_import_error(h) for h in node.handlers):
    for child in node.body:
      yield from _imports_under(child, True)
    for child in [*node.handlers, *node.orelse, *node.finalbody]:
      yield from _imports_under(child, optional)
    return
  for child in ast.iter_child_nodes(node):
    yield from _imports_under(child, optional)


def _catches_import_error(handler):
  names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
  return any(
    isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names
  )


def distributions_of(module, packages_distributions):
  """The installed distributions that provide `module`; in a namespace package shared by many
  (google), those holding its subpackage (google.protobuf: protobuf)."""
  parts = module.split(".")
  candidates = packages_distributions.get(parts[0], [])
  if len(candidates) > 1 and len(parts) > 1:
    prefix = "/".join(parts[:2])
    candidates = [
      d
      for d in candidates
      if any(
        str(f).startswith(prefix + "/") or str(f) == prefix + ".py" for f in metadata.files(d) or []
      )
    ]
  return {canonicalize_name(d) for d in candidates}


def undeclared_imports(found, install_requires, extras):
  """Each third-party import of segbeam/ that no requirement declares: install_requires for an
  import segbeam always runs, install_requires or an extra for one it guards (try/ImportError)."""
  required = {canonicalize_name(Requirement(r).name) for r in install_requires}
  optional = required | {
    canonicalize_name(Requirement(r).name) for requirements in extras.values() for r in requirements
  }
  packages_distributions = metadata.packages_distributions()
  problems = set()
  for module, is_optional, path in found:
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top == "segbeam":
      continue
    where = os.path.relpath(path, ROOT)
    distributions = distributions_of(module, packages_distributions)
    if not distributions:
      problems.add(f"{where}: imports {module}, which no installed distribution provides")
    elif not distributions & (optional if is_optional else required):
      declared_in = "install_requires or extras" if is_optional else "install_requires"
      problems.add(
        f"{where}: imports {module} ({', '.join(sorted(distributions))}), not in "
        f"setup.py's {declared_in}"
      )
  return sorted(problems)


def test_every_package_segbeam_imports_is_declared():
  found = imports(PACKAGE_DIR)
  modules = {module.split(".")[0] for module, _, _ in found}
  assert {"apache_beam", "tensorflow", "numpy", "google_crc32c"} <= modules  # the walk works
  assert undeclared_imports(found, *setup_requirements()) == []


def test_an_undeclared_import_is_caught():
  found = [
    ("numpy", False, SETUP_PY),
    ("google.protobuf.message", False, SETUP_PY),
    ("skimage", True, SETUP_PY),
    ("os.path", False, SETUP_PY),
  ]
  assert undeclared_imports(found, ["numpy>=2", "protobuf>=6"], {"demo": ["scikit-image"]}) == []
  assert undeclared_imports(found, ["numpy>=2", "scikit-image"], {}) == [
    "setup.py: imports google.protobuf.message (protobuf), not in setup.py's install_requires"
  ]
  assert undeclared_imports([("skimage", False, SETUP_PY)], [], {"demo": ["scikit-image"]}) == [
    "setup.py: imports skimage (scikit-image), not in setup.py's install_requires"
  ]


def dockerignore_excludes(patterns, path):
  """Whether BuildKit leaves `path` (relative to the build context) out: as Docker matches, the
  last pattern matching the path or a folder above it decides, a `!` pattern letting it in."""
  parts = path.strip("/").split("/")
  paths = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
  excluded = False
  for pattern in patterns:
    negated = pattern.startswith("!")
    glob = pattern[1:].strip() if negated else pattern
    regex = re.compile(
      "".join(
        "(.*/)?"
        if token == "**/"
        else ".*"
        if token == "**"
        else "[^/]*"
        if token == "*"
        else "[^/]"
        if token == "?"
        else re.escape(token)
        for token in re.findall(r"\*\*/|\*\*|\*|\?|[^*?]+", glob.strip("/"))
      )
    )
    if any(regex.fullmatch(p) for p in paths):
      excluded = not negated
  return excluded


def _dockerignore_patterns():
  return [
    line.strip()
    for line in _read(DOCKERIGNORE).splitlines()
    if line.strip() and not line.lstrip().startswith("#")
  ]


def test_dockerignore_lets_in_every_file_the_image_copies():
  sources = []
  for name, value in dockerfile_instructions(_read(DOCKERFILE)):
    words = value.split()
    if name == "COPY" and not any(w.startswith("--from") for w in words):
      sources.extend(w for w in words[:-1] if not w.startswith("--"))
  assert {"setup.py", "constraints.txt", "deploy/cuda-wheels.txt"} <= set(sources)
  patterns = _dockerignore_patterns()
  for source in sources:
    assert os.path.exists(os.path.join(ROOT, source)), source
    assert not dockerignore_excludes(patterns, source), f"{source} is left out of the context"
  assert dockerignore_excludes(patterns, "tests/deploy/deploy_test.py")
  assert dockerignore_excludes(patterns, "segbeam/commands/__pycache__/submit.cpython-311.pyc")
  assert not dockerignore_excludes(patterns, "segbeam/commands/submit.py")
  assert dockerignore_excludes([p for p in patterns if p != "!deploy/main.py"], "deploy/main.py")


def test_image_and_ci_install_with_the_constraints():
  instructions = dockerfile_instructions(_read(DOCKERFILE))
  args = dockerfile_args(instructions)
  runs = [substitute(value, args) for name, value in instructions if name == "RUN"]
  assert any(
    f"apache-beam[gcp]=={versions.BEAM_VERSION}" in run
    and f"tensorflow[and-cuda]=={versions.TENSORFLOW_VERSION}" in run
    and "-c /tmp/segbeam/constraints.txt" in run
    for run in runs
  )
  copies = [value.split() for name, value in instructions if name == "COPY"]
  assert any(
    "constraints.txt" in words[:-1] and words[-1].startswith("/tmp/segbeam/") for words in copies
  )
  ci = _read(os.path.join(ROOT, ".ci", "run"))
  assert re.search(r'pip install (--quiet )?-c constraints\.txt -e "\.\[test\]"', ci)
