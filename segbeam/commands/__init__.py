"""The command line's front ends: `segbeam run` and `demo` (`run`), `submit` (Dataflow), the
Flex Template's launcher (`flex_template`), `pack`, and the model's commands (`model`: train,
evaluate, export, model list/summary).

Each registers its commands with `add_parser` (listed in `segbeam.cli.COMMANDS`) and says why it
stopped through `segbeam.exits`. Nothing below (the run, the stages, the model) imports them.
"""
