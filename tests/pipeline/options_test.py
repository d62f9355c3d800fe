"""segbeam's run options: parsed from the command line, checked before a pipeline is built."""

import argparse

import pytest

from segbeam.pipeline import options as options_lib
from segbeam.pipeline import sources


def _parse(*argv):
  parser = argparse.ArgumentParser()
  options_lib.add_arguments(parser)
  return options_lib.from_args(parser.parse_args(["--input", "in/*", "--output", "out/",
                                                  *argv]))


def test_defaults_from_the_command_line():
  options = _parse()
  assert (options.output, options.batch_size, options.input_format) == (
      "out", 32, sources.FORMAT_AUTO)
  assert options.example_keys == sources.ExampleKeys()
  assert options.run_id and options.started


@pytest.mark.parametrize("flag", ["--batch-size", "--max-pixels", "--max-file-bytes",
                                  "--inference-slices", "--postprocess-threads"])
def test_counts_below_one_are_refused_by_name(flag):
  assert _parse(flag, "1")  # the smallest allowed
  with pytest.raises(ValueError, match=f"^{flag} must be at least 1, got 0$"):
    _parse(flag, "0")
