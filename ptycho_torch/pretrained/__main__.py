"""``python -m ptycho_torch.pretrained``: the shipped models, their pattern sizes and files (e.g. for Ptychodus's Load Model)."""

from __future__ import annotations

import sys

import ptycho_torch.pretrained as pretrained


def main(argv=None) -> int:
    present = pretrained.available_models()
    for name, (file, N) in pretrained.SHIPPED.items():
        state = "" if name in present else "  (missing from this installation; python -m ptycho_torch.pretrained.build builds it)"
        print(f"{name}\t{N} x {N} patterns\t{pretrained.MODELS_DIR / file}{state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
