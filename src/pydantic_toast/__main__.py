"""`python -m pydantic_toast …`: the same commands as the `pydantic-toast` script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
