"""``python -m ptycho_torch.pretrained``: the shipped models, their pattern sizes and files (e.g. for Ptychodus's Load Model)."""

from __future__ import annotations

import argparse
import sys

import ptycho_torch.pretrained as pretrained

PROG = "python -m ptycho_torch.pretrained"


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=PROG, description="List the shipped models: name, pattern size and weights file (one per line, tab-separated).",
        epilog="Rebuild them with python -m ptycho_torch.pretrained.build (make pretrained) and "
               "python -m ptycho_torch.pretrained.build_object_network (make object-network).")


def main(argv=None) -> int:
    """List the shipped models; ``argv``: the command's arguments (none, or ``--help``), ``None`` for none."""
    parser = build_parser()
    try:
        parser.parse_args([] if argv is None else argv)
    except SystemExit as exc:  # --help (0), or an argument this listing does not take (2), already reported by argparse
        return exc.code if isinstance(exc.code, int) else 2
    present = pretrained.available_models()
    for name, (file, N) in pretrained.SHIPPED.items():
        state = "" if name in present else "  (missing from this installation; python -m ptycho_torch.pretrained.build builds it)"
        print(f"{name}\t{N} x {N} patterns\t{pretrained.MODELS_DIR / file}{state}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
