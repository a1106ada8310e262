"""An interrupted training (Ctrl-C) re-raises KeyboardInterrupt from ``train_model`` and makes ``ptycho-train`` exit 130
with a message, whatever Lightning does with the KeyboardInterrupt inside ``Trainer.fit`` (2.6 turns it into ``sys.exit(1)``)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning.pytorch")

from ptycho_torch.run_dirs import INCOMPLETE, mark_incomplete  # noqa: E402
from ptycho_torch.workflow import train_model  # noqa: E402
from tests.interrupt import interrupt_once  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NPZ = ROOT / "datasets" / "sim_small.npz"


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class TinyData(L.LightningDataModule):
    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(8, 2)), batch_size=4)


class RaiseAt(L.Callback):
    """Raises ``exception`` at the second training batch (as Ctrl-C would raise KeyboardInterrupt there)."""

    def __init__(self, exception: BaseException):
        self.exception = exception

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step >= 1:
            raise self.exception


def fit(run_dir: Path, exception: BaseException):
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[RaiseAt(exception)])
    return train_model(Tiny(), TinyData(), trainer, run_dir)


def test_an_interrupt_during_fit_is_a_keyboard_interrupt_and_keeps_the_run_marked(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"a checkpoint of the first epoch")
    mark_incomplete(run_dir)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match=f"training in {run_dir} was interrupted"):
        fit(run_dir, KeyboardInterrupt())
    assert (run_dir / INCOMPLETE).is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert signal.getsignal(signal.SIGINT) is handler  # Ctrl-C works again after the fit (Lightning ignores it while it shuts down)


def test_an_interrupted_run_without_checkpoints_leaves_no_directory(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    mark_incomplete(run_dir)
    with pytest.raises(KeyboardInterrupt):
        fit(run_dir, KeyboardInterrupt())
    assert not run_dir.exists()


def test_sys_exit_inside_fit_stays_sys_exit(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(SystemExit) as raised:
        fit(run_dir, SystemExit(5))
    assert raised.value.code == 5


def test_ctrl_c_during_ptycho_train_exits_130_with_a_message_and_keeps_the_run_marked(tmp_path):
    output = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    returncode, stdout, stderr = interrupt_once(
        [sys.executable, "-m", "ptycho_torch.cli_train", str(NPZ), "--n-groups", "32", "--epochs", "500", "--threads", "1",
         "--output-dir", str(output), "--data-dir", str(tmp_path / "memmap"), "--quiet"], output, "run_*/checkpoints/*.ckpt",
        cwd=ROOT, env=env, timeout_s=120)
    (run_dir,) = output.glob("run_*")
    assert returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == f"ptycho-train: training in {run_dir} was interrupted", stderr[-3000:]
    assert "Traceback" not in stderr and stdout == ""
    assert (run_dir / INCOMPLETE).is_file() and list(run_dir.glob("checkpoints/*.ckpt"))
