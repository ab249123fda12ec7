"""The training loop: data, model, head, SGD with step decay, checkpoints, curves.

One process or many under torchrun (DDP; gloo on CPUs, NCCL on GPUs). `--batch_size` is
the global batch, split evenly over the processes; with --sync_bn (default) batch norm,
AdaFace's norm statistics and GroupFace's batch mean use the global batch, so the losses
do not depend on the number of processes. Only rank 0 writes files.
"""

import csv
import io
import math
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from bridges import default_workers, set_threads
from bridges.recognition import data as data_lib
from bridges.recognition import distributed
from bridges.recognition.config import RUN_LENGTH_FLAGS, TrainConfig
from bridges.recognition.groupface import GROUP_LOSS_WEIGHT, group_loss
from bridges.recognition.heads import HEADS, MarginHead
from bridges.recognition.iresnet import ARCHS
from bridges.recognition.model import SPEC_KEYS, FaceModel
from hyperface_jax.files import InputError, atomic_write, save_json

STEP_COLUMNS = ("step", "epoch", "loss", "accuracy", "lr")
EPOCH_COLUMNS = ("epoch", "step", "loss", "accuracy", "lr", "seconds")


class Trainee(nn.Module):
    """Model and head in one module, so DDP synchronises both."""

    def __init__(self, c: TrainConfig, num_classes: int):
        super().__init__()
        self.model = FaceModel(model_spec(c))
        kind = c.group_margin if c.head == "groupface" else c.head
        self.head = MarginHead(kind, num_classes, c.embedding_size, s=c.scale,
                               m=None if c.margin < 0 else c.margin, h=c.adaface_h,
                               t_alpha=c.adaface_t_alpha)
        self.is_groupface = c.head == "groupface"

    def forward(self, images, labels):
        out = self.model(images)
        dtype = self.head.weight.dtype  # the head runs in full precision under AMP
        logits, cosine = self.head(out["embedding"].to(dtype), labels)
        loss = F.cross_entropy(logits, labels)
        if self.is_groupface:
            loss = loss + GROUP_LOSS_WEIGHT * group_loss(out["group_logits"].to(dtype),
                                                         out["probs"].to(dtype))
        correct = (cosine.argmax(dim=1) == labels).float().mean()
        return loss, correct


def model_spec(c: TrainConfig) -> dict:
    return {k: getattr(c, k) for k in SPEC_KEYS}


def lr_at(c: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Warm-up (linear, per step) then the step decay at the epochs of --lr_steps."""
    epoch_float = step / steps_per_epoch
    if c.warmup_epochs > 0 and epoch_float < c.warmup_epochs:
        return c.lr * (step + 1) / max(c.warmup_epochs * steps_per_epoch, 1)
    drops = sum(step >= e * steps_per_epoch for e in parse_lr_steps(c.lr_steps))
    return c.lr * c.lr_gamma ** drops


def parse_lr_steps(spec: str) -> list[int]:
    try:
        return [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise InputError(f"--lr_steps must be comma-separated epochs, got {spec!r}") from None


def validate(c: TrainConfig, world: int) -> None:
    if not c.out_dir:
        raise InputError("--out_dir is required")
    if not c.data:
        raise InputError("--data is required (a folder of identity folders)")
    checks = [
        (c.arch in ARCHS, f"unknown --arch {c.arch!r}; expected one of {', '.join(ARCHS)}"),
        (c.head in HEADS, f"unknown --head {c.head!r}; expected one of {', '.join(HEADS)}"),
        (c.group_margin in ("arcface", "cosface", "adaface"),
         f"unknown --group_margin {c.group_margin!r}; expected arcface, cosface or adaface"),
        (c.group_aggregation in ("soft", "hard"), "--group_aggregation must be soft or hard"),
        (c.input_size >= 16 and c.input_size % 16 == 0,
         f"--input_size must be a positive multiple of 16, got {c.input_size}"),
        (c.width >= 1 and c.embedding_size >= 2, "--width and --embedding_size must be positive"),
        (c.epochs >= 1, f"--epochs must be at least 1, got {c.epochs}"),
        (c.batch_size >= 2, f"--batch_size must be at least 2, got {c.batch_size}"),
        (c.batch_size % world == 0,
         f"--batch_size {c.batch_size} is not divisible by the {world} processes"),
        (c.lr > 0 and math.isfinite(c.lr), f"--lr must be positive, got {c.lr}"),
        (0 <= c.dropout < 1, f"--dropout must be in [0, 1), got {c.dropout}"),
        (c.groups >= 2, f"--groups must be at least 2, got {c.groups}"),
        (c.device in ("auto", "cpu", "cuda"),
         f"--device must be auto, cpu or cuda, not {c.device}"),
        (c.workers >= -1, "--workers must be >= 0, or -1 (picked from the machine)"),
        (c.threads >= 0, "--threads must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise InputError(message)
    parse_lr_steps(c.lr_steps)
    data_lib.parse_augment(c.augment)
    if c.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device=cuda but no GPU is visible")


def make_optimizer(c: TrainConfig, trainee: Trainee) -> torch.optim.Optimizer:
    """SGD; batch-norm parameters without weight decay (the AdaFace repository's split)."""
    bn, rest = [], []
    for module in trainee.modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        (bn if isinstance(module, nn.modules.batchnorm._BatchNorm) else rest).extend(own)
    return torch.optim.SGD([{"params": rest, "weight_decay": c.weight_decay},
                            {"params": bn, "weight_decay": 0.0}],
                           lr=c.lr, momentum=c.momentum)


def _checkpoints(out: Path) -> list[Path]:
    return sorted((out / "checkpoints").glob("epoch_*.pt"))


def _save_torch(path: Path, blob) -> None:
    buffer = io.BytesIO()
    torch.save(blob, buffer)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def _write_csv(path: Path, columns, rows) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def _identity(c: TrainConfig, folder) -> dict:
    values = {k: v for k, v in c.flag_values().items() if k not in RUN_LENGTH_FLAGS}
    values.update(num_images=len(folder.paths), num_classes=folder.num_classes)
    return values


def run(c: TrainConfig, *, log=None) -> dict:
    """Train (or resume) and write the outputs; returns the report (rank 0) or {}."""
    started = time.time()
    rank, local_rank, world = distributed.init_from_env()
    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    validate(c, world)
    folder = data_lib.scan(c.data)
    if len(folder.paths) < c.batch_size:
        raise InputError(f"training data {c.data} has {len(folder.paths)} images, fewer than "
                         f"--batch_size={c.batch_size}")
    use_cuda = c.device == "cuda" or (c.device == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    amp = bool(c.amp and use_cuda)
    out = Path(c.out_dir)
    identity = _identity(c, folder)
    threads = set_threads(c.threads)
    workers = c.workers if c.workers >= 0 else default_workers()

    resume = None
    existing = _checkpoints(out)
    if existing:
        resume = _load_checkpoint(existing[-1])
        changed = {k for k in identity if resume["identity"].get(k) != identity[k]}
        if changed:
            raise InputError(f"{out} holds a run with different settings "
                             f"({', '.join(sorted(changed))}); use a new --out_dir")

    torch.manual_seed(c.seed)
    trainee = Trainee(c, folder.num_classes)
    if world > 1 and c.sync_bn:
        trainee = distributed.convert_sync_batchnorm(trainee)
    trainee.to(device)
    optimizer = make_optimizer(c, trainee)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    steps_per_epoch = len(folder.paths) // c.batch_size
    start_epoch, step = 0, 0
    step_rows, epoch_rows, seconds_before = [], [], 0.0
    if resume is not None:
        trainee.load_state_dict(resume["trainee"])
        optimizer.load_state_dict(resume["optimizer"])
        if amp and resume["scaler"]:  # empty when the run so far had no AMP
            scaler.load_state_dict(resume["scaler"])
        start_epoch, step = resume["epoch"], resume["step"]
        step_rows, epoch_rows = resume["step_rows"], resume["epoch_rows"]
        seconds_before = epoch_rows[-1]["seconds"] if epoch_rows else 0.0
        if rank == 0:
            log(f"resuming after epoch {start_epoch} (step {step}) from {existing[-1]}")
    net = trainee
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            trainee, device_ids=[local_rank] if use_cuda else None)

    dataset = data_lib.TrainSet(folder, c.input_size, data_lib.parse_augment(c.augment), c.seed)
    if rank == 0:  # out_dir is created by the first file written (nothing if a bad image)
        log(f"{len(folder.paths)} images of {folder.num_classes} identities; {c.arch} "
            f"(width {c.width}, input {c.input_size}) + {c.head}; {world} process(es) on "
            f"{device}{' with AMP' if amp else ''}, {threads} threads, {workers} loader "
            f"workers; {steps_per_epoch} steps per epoch")
    total_steps = c.epochs * steps_per_epoch
    if c.max_steps:
        total_steps = min(total_steps, c.max_steps)
    bar = tqdm(total=total_steps, initial=step, disable=not c.progress or rank != 0,
               unit="step", dynamic_ncols=True, file=sys.stderr)
    t0 = time.perf_counter()
    epoch = start_epoch
    # SIGTERM ends the run like Ctrl-C (exit 130); finished epochs are checkpointed.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        for epoch in range(start_epoch, c.epochs):
            if step >= total_steps:
                break
            sampler = data_lib.GlobalBatchSampler(len(dataset), c.batch_size, rank=rank,
                                                  world=world, seed=c.seed, epoch=epoch)
            loader = torch.utils.data.DataLoader(
                dataset, batch_sampler=sampler, num_workers=workers,
                pin_memory=use_cuda, persistent_workers=False)
            net.train()
            torch.manual_seed(c.seed * 100_003 + epoch)  # dropout: the same after a resume
            sums = torch.zeros(3, dtype=torch.float64)
            for images, labels in loader:
                if step >= total_steps:
                    break
                lr = lr_at(c, step, steps_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
                    loss, accuracy = net(images, labels)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                figures = distributed.mean_over_processes(
                    torch.stack([loss.detach().float(), accuracy.float()]).cpu())
                loss_value, acc_value = float(figures[0]), float(figures[1])
                if not math.isfinite(loss_value):
                    raise FloatingPointError(f"loss is {loss_value} at step {step}; lower --lr")
                step += 1
                step_rows.append({"step": step, "epoch": epoch + 1, "loss": loss_value,
                                  "accuracy": acc_value, "lr": lr})
                sums += torch.tensor([loss_value, acc_value, 1.0], dtype=torch.float64)
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss_value:.3f}", acc=f"{acc_value:.3f}")
            if sums[2] == 0:
                break
            seconds = seconds_before + time.perf_counter() - t0
            epoch_rows.append({"epoch": epoch + 1, "step": step,
                               "loss": float(sums[0] / sums[2]),
                               "accuracy": float(sums[1] / sums[2]), "lr": lr,
                               "seconds": round(seconds, 3)})
            if not c.progress and rank == 0:
                log(f"epoch {epoch + 1}: loss={epoch_rows[-1]['loss']:.4f} "
                    f"accuracy={epoch_rows[-1]['accuracy']:.4f} lr={lr:g}")
            complete = step == (epoch + 1) * steps_per_epoch
            if rank == 0 and complete:
                _save_checkpoint(out, c, trainee, optimizer, scaler, epoch + 1, step,
                                 step_rows, epoch_rows, identity)
                _write_outputs(out, c, trainee, step_rows, epoch_rows)
    finally:
        bar.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    report = {}
    if rank == 0:
        report = _write_outputs(out, c, trainee, step_rows, epoch_rows, final=True,
                                extra={"world_size": world, "device": str(device), "amp": amp,
                                       "torch_threads": threads, "loader_workers": workers,
                                       "num_images": len(folder.paths),
                                       "num_classes": folder.num_classes,
                                       "steps_per_epoch": steps_per_epoch,
                                       "wall_seconds": round(time.time() - started, 3)})
        log(f"done: {step} steps, loss {step_rows[-1]['loss']:.4f}, training accuracy "
            f"{step_rows[-1]['accuracy']:.4f} -> {out}")
    if distributed.is_distributed():
        torch.distributed.barrier()
    return report


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _load_checkpoint(path: Path) -> dict:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is bad input
        raise InputError(f"checkpoint {path} cannot be read ({type(e).__name__}); delete it "
                         "to resume from the one before, or use a new --out_dir") from None
    keys = ("identity", "trainee", "optimizer", "scaler", "epoch", "step", "step_rows",
            "epoch_rows")
    if not isinstance(blob, dict) or any(k not in blob for k in keys):
        raise InputError(f"checkpoint {path} is not a bridges.train checkpoint")
    return blob


def _save_checkpoint(out, c, trainee, optimizer, scaler, epoch, step, step_rows, epoch_rows,
                     identity) -> None:
    blob = {"spec": model_spec(c), "model": _plain_state(trainee.model),
            "trainee": trainee.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(), "epoch": epoch, "step": step,
            "step_rows": step_rows, "epoch_rows": epoch_rows, "identity": identity}
    _save_torch(out / "checkpoints" / f"epoch_{epoch:03d}.pt", blob)
    for old in _checkpoints(out)[:-max(c.keep_checkpoints, 1)]:
        old.unlink()


def _plain_state(model) -> dict:
    """State dict with SyncBatchNorm saved under the plain BatchNorm names (identical)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _write_outputs(out, c, trainee, step_rows, epoch_rows, final=False, extra=None) -> dict:
    _write_csv(out / "steps.csv", STEP_COLUMNS, step_rows)
    _write_csv(out / "history.csv", EPOCH_COLUMNS, epoch_rows)
    if step_rows:
        from bridges.recognition.plots import training_curves
        training_curves(step_rows, epoch_rows, out / "curves.png",
                        title=f"{c.arch} + {c.head}, batch {c.batch_size}")
    if not final:
        return {}
    _save_torch(out / "model.pt", {"spec": model_spec(c), "model": _plain_state(trainee.model)})
    report = {"final": step_rows[-1] if step_rows else None,
              "epochs_done": epoch_rows[-1]["epoch"] if epoch_rows else 0,
              "steps": step_rows[-1]["step"] if step_rows else 0,
              "flags": c.flag_values(), "torch_version": torch.__version__,
              "numpy_version": np.__version__, **(extra or {}), "history": epoch_rows}
    save_json(out / "report.json", report)
    return report
