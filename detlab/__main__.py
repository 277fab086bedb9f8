"""``python -m detlab`` is the ``detlab`` command."""

from detlab.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
