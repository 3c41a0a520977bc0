"""`python -m iotpipe`: the console script's sub-commands."""

from iotpipe.cli import main

main()
