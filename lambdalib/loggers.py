"""Optional experiment trackers that mirror each epoch's history row and the config (the run record stays the
single source of every table and figure):

    lambdalib train ... --logger tensorboard      # event files in results/runs/<run id>/tensorboard/
    tensorboard --logdir results/runs              # every run, named by its run id
    lambdalib train ... --logger wandb             # pip install wandb; WANDB_MODE=offline works offline
"""
from __future__ import annotations

import math
import netrc
import os
from pathlib import Path

from .config import RunConfig

# history columns that are numbers worth a curve, grouped as dashboards expect
SCALARS = {"train_loss": "loss/train", "val_loss": "loss/val", "train_acc": "accuracy/train", "val_acc": "accuracy/val",
           "lr": "optim/lr", "grad_norm_mean": "optim/grad_norm_mean", "grad_norm_max": "optim/grad_norm_max",
           "loss_scale": "optim/loss_scale", "skipped_steps": "optim/skipped_steps",
           "epoch_time_s": "time/epoch_s", "train_images_per_s": "time/train_images_per_s"}


class NullLogger:
    def log_epoch(self, row: dict) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLogger(NullLogger):
    def __init__(self, config: RunConfig, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError("logger='tensorboard' needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        self.writer.add_text("config", "\n".join(f"    {k}: {v!r}" for k, v in config.to_dict().items()))

    def log_epoch(self, row: dict) -> None:
        for column, tag in SCALARS.items():
            value = row.get(column)
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(tag, value, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger(NullLogger):
    def __init__(self, config: RunConfig, run_dir: Path):
        try:
            import wandb
        except ImportError:
            raise ValueError('logger="wandb" needs wandb: pip install wandb') from None
        # resume="allow" with the run id: a resumed lambdalib run continues the same W&B run, whose id allows
        # letters, digits, '-' and '_' only (up to 128)
        wandb_id = "".join(c if c.isalnum() or c in "-_" else "-" for c in config.run_id)[:128]
        self.run = wandb.init(project="lambdalib", name=config.run_id, id=wandb_id, config=config.to_dict(),
                              dir=str(run_dir), resume="allow", reinit=True)

    def log_epoch(self, row: dict) -> None:
        self.run.log({tag: row[column] for column, tag in SCALARS.items()
                      if isinstance(row.get(column), (int, float))}, step=row["epoch"])

    def close(self) -> None:
        self.run.finish()


def check_logger(config: RunConfig) -> None:
    """Before a run folder exists: a logger that cannot start says so in one line (W&B online without a key)."""
    if config.logger != "wandb" or os.environ.get("WANDB_MODE", "online") in ("offline", "disabled", "dryrun"):
        return
    hosts = netrc.netrc().hosts if Path("~/.netrc").expanduser().is_file() else {}
    if not os.environ.get("WANDB_API_KEY") and "api.wandb.ai" not in hosts:
        raise ValueError('logger="wandb": no W&B API key here; run `wandb login` (or set WANDB_API_KEY), or log '
                         "locally with WANDB_MODE=offline")


def open_logger(config: RunConfig, run_dir: Path) -> NullLogger:
    logger = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger}.get(config.logger)
    return logger(config, run_dir) if logger else NullLogger()
