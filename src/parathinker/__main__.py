"""``python -m parathinker ...`` is the ``parathinker`` command (useful where the package is on PYTHONPATH but not installed)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
