"""`python -m aioc4`."""

from .cli import main

main()
