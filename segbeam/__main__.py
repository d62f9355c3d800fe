import sys

from segbeam import cli

sys.exit(cli.main())
