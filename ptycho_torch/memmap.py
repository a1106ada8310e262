"""``python -m ptycho_torch.memmap``: the ``ptycho-memmap`` command line."""

import sys

from ptycho_torch.cli import main

if __name__ == "__main__":
    sys.exit(main())
