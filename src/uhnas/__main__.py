"""`python -m uhnas` runs the command-line interface."""

from uhnas.cli import main

main()
