"""The `segbeam` console script: the garbage collector paused for start-up (`startup`), then the
command line (`segbeam.cli`)."""

from segbeam import startup


def main() -> None:
  startup.pause()
  from segbeam import cli  # noqa: PLC0415  # imported while paused

  cli.entry_point()
