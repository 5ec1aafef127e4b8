"""The commands `make` runs for maintainers and instructors, one module per command.

Run one as `python -m labtools <command> [options]`; `python -m labtools` lists them. Notebooks never
import this package: what they share lives in `utils/`.
"""
