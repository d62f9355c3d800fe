"""The light modules stay light: reading options, the export contract and a run's results loads
neither TensorFlow nor Beam's ML modules, so the command line, `segbeam query`/`summary` and a
user's own code importing them start without TensorFlow's seconds of start-up."""

import ast
import subprocess
import sys

import pytest

LIGHT_MODULES = [
  "segbeam.cli",
  "segbeam.pipeline.options",
  "segbeam.pipeline.constants",
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
