"""The light modules stay light: reading options, the export contract and a run's results loads
neither TensorFlow nor Beam's ML modules, so the command line, `segbeam query`/`summary` and a
user's own code importing them start without TensorFlow's seconds of start-up."""

import ast
import pathlib
import subprocess
import sys

import pytest

LIGHT_MODULES = [
  "segbeam.cli",
  "segbeam.options",
  "segbeam.exits",
  "segbeam.messages",
  "segbeam.commands.run",
  "segbeam.commands.submit",
  "segbeam.pipeline.layout",
  "segbeam.constants",
  "segbeam.model.contract",
  "segbeam.model.config",
  "segbeam.model.defaults",
  "segbeam.results.output",
  "segbeam.results.query",
  "segbeam.results.summary",
  "segbeam.results.report",
]
HEAVY_PREFIXES = ("tensorflow", "keras", "tfx_bsl", "apache_beam.ml")


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_importing_a_light_module_loads_no_heavy_one(module):
  code = (
    f"import sys, {module}; "
    f"print(sorted({{m.split('.')[0] if not m.startswith('apache_beam.ml') else "
    f"'apache_beam.ml' for m in sys.modules if m.startswith({HEAVY_PREFIXES!r})}}))"
  )
  out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
  assert out.stdout.strip() == "[]", f"{module} loads {out.stdout.strip()}"


def test_the_check_sees_a_heavy_module():
  """The test above would pass vacuously if the names it looks for were wrong."""
  code = (
    "import sys, segbeam.pipeline.inference; "
    f"print(sorted({{m.split('.')[0] for m in sys.modules if m.startswith({HEAVY_PREFIXES!r})}}))"
  )
  out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
  assert {"tensorflow", "tfx_bsl", "apache_beam"} <= set(ast.literal_eval(out.stdout))


ROOT = pathlib.Path(__file__).resolve().parent.parent / "segbeam"
# What each folder never imports, lazily or not: the data flows one way, front ends (commands,
# the cli) -> the run -> the stages -> the model.
NEVER_IMPORTS = {
  # The top-level modules the others share (options, exits, messages, startup, ...); the
  # console script and the command line (`TOP_FRONT_ENDS`) are front ends.
  ".": ("segbeam.run", "segbeam.commands", "segbeam.cli", "segbeam.pipeline.", "segbeam.model"),
  "pipeline": ("segbeam.run", "segbeam.commands", "segbeam.cli"),
  "model": ("segbeam.pipeline", "segbeam.run", "segbeam.commands", "segbeam.cli"),
  "results": ("segbeam.run", "segbeam.commands", "segbeam.cli"),
  "run": ("segbeam.commands", "segbeam.cli"),
}


def imported_names(path: pathlib.Path) -> set[str]:
  """Every module a file imports, anywhere in it (`from a import b` as both a and a.b)."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f"{node.module}.{alias.name}" for alias in node.names)
  return names


TOP_FRONT_ENDS = ("cli.py", "console.py", "__main__.py")


@pytest.mark.parametrize("folder", sorted(NEVER_IMPORTS))
def test_imports_follow_the_data_flow(folder):
  forbidden = NEVER_IMPORTS[folder]
  files = sorted(p for p in (ROOT / folder).glob("*.py") if p.name not in TOP_FRONT_ENDS)
  assert files
  found = [
    f"{path.name} imports {name}"
    for path in files
    for name in sorted(imported_names(path))
    if name.startswith(forbidden)
  ]
  assert not found, found


def test_the_data_flow_check_sees_an_import(tmp_path):
  """The test above would pass vacuously if it read no imports."""
  module = tmp_path / "m.py"
  module.write_text("def f():\n  from segbeam.run import job\n", encoding="utf-8")
  assert "segbeam.run.job" in imported_names(module)
