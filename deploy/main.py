"""Flex Template entry point (FLEX_TEMPLATE_PYTHON_PY_FILE in deploy/Dockerfile).

Dataflow's template launcher runs this file inside the worker image with the template's
parameters and Beam's options; segbeam, installed in the image, builds and submits the job.
"""

import logging

from segbeam import quiet
from segbeam.commands import flex_template

if __name__ == "__main__":
  logging.getLogger().setLevel(logging.INFO)
  quiet.import_tensorflow()  # without its C++ start-up lines in the launcher's log
  flex_template.launch()
