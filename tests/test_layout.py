"""The storage package stays torch-free: every module of ``ptycho_torch.store`` imports with torch blocked (about 1 s)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLOCKED = ("torch", "lightning", "tensordict", "matplotlib")


def test_every_store_module_imports_without_torch():
    code = (
        "import importlib, pkgutil, sys\n"
        f"for name in {BLOCKED!r}:\n    sys.modules[name] = None\n"
        "import ptycho_torch.store as store\n"
        "names = [m.name for m in pkgutil.iter_modules(store.__path__, 'ptycho_torch.store.')]\n"
        "for name in names:\n    importlib.import_module(name)\n"
        "print(len(names), sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{BLOCKED!r} and sys.modules[m] is not None))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    count, loaded = result.stdout.split(" ", 1)
    assert int(count) >= 8 and loaded.strip() == "[]", result.stdout
