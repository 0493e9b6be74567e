"""``python -m parathinker.tasks.pathfind make-data --out DIR --train N --test M --seed S``."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
