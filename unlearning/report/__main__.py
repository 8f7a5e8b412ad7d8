"""``python -m unlearning.report DIR [DIR ...]``: see :mod:`unlearning.report.cli`."""

from unlearning.report.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
