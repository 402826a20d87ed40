"""``python -m experiments.benchmark``: see the package docstring."""

from . import main

if __name__ == "__main__":
    main()
