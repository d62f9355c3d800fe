from segbeam import cli

cli.entry_point()
