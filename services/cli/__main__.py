"""`python -m services.cli`: the same as the `clearhouse` command."""

from services.cli.main import main

main()
