"""The training loop: data, model, head, SGD with step decay, checkpoints, curves.

One process or many under torchrun (DDP; gloo on CPUs, NCCL on GPUs). `--batch_size` is
the global batch, split evenly over the processes; with --sync_bn (default) batch norm,
AdaFace's norm statistics and GroupFace's batch mean use the global batch, so the losses
do not depend on the number of processes. Only rank 0 writes files.
"""

import csv
import dataclasses
import io
import math
import sys
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
from bridges.recognition.heads import MarginHead
from bridges.recognition.model import SPEC_KEYS, FaceModel, weights_problem
from hyperface_jax import options
from hyperface_jax.io import integrity, runs
from hyperface_jax.io.files import InputError, RunFailed, atomic_write, save_json

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
    options.check_values(type(c), dataclasses.asdict(c))
    if not c.out_dir:
        raise InputError("--out_dir is required")
    if not c.data:
        raise InputError("--data is required (a folder of identity folders)")
    checks = [  # (each value's own bounds and choices: TrainConfig's option table)
        (c.input_size % 16 == 0,
         f"--input_size must be a positive multiple of 16, got {c.input_size}"),
        (c.batch_size % world == 0,
         f"--batch_size {c.batch_size} is not divisible by the {world} processes"),
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


def _save_torch(path: Path, blob, *, ledger_keep=None) -> None:
    """Write `blob` atomically; with `ledger_keep` (the checkpoint names kept), record its
    checksum first, so every checkpoint on disk has one whenever a kill comes."""
    buffer = io.BytesIO()
    torch.save(blob, buffer)
    data = buffer.getvalue()
    if ledger_keep is not None:
        integrity.record(path.parent, {path.name: {path.name: integrity.sha256_bytes(data)}},
                         keep=ledger_keep)
    atomic_write(path, lambda f: f.write(data))


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


# The run: plan, resume, the epoch loop with its epoch-end hooks, the report --------------

@dataclasses.dataclass
class Plan:
    """A training job ready to run: where it runs, its data, model and optimizer."""
    config: TrainConfig
    rank: int
    local_rank: int
    world: int
    device: torch.device
    amp: bool
    threads: int  # torch intra-op threads (--threads, 0: picked from the machine)
    workers: int  # DataLoader workers (--workers, -1: picked from the machine)
    folder: data_lib.ImageFolder
    excluded: list  # the --exclude entries left out
    identity: dict  # what a resumed run must share with the run that wrote the checkpoint
    trainee: Trainee
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    dataset: data_lib.TrainSet
    steps_per_epoch: int
    total_steps: int

    @property
    def out(self) -> Path:
        return Path(self.config.out_dir)


def plan(c: TrainConfig) -> Plan:
    """Join the torchrun processes (if any), validate `c`, read the data and build the
    model, head, optimizer and grad scaler at step 0. Writes nothing."""
    rank, local_rank, world = distributed.init_from_env()
    validate(c, world)
    folder, excluded = data_lib.scan(c.data), []
    if c.exclude:
        folder, excluded = data_lib.without(folder, c.data, data_lib.read_exclude(c.exclude))
    if len(folder.paths) < c.batch_size:
        raise InputError(f"training data {c.data} has {len(folder.paths)} images, fewer than "
                         f"--batch_size={c.batch_size}")
    use_cuda = c.device == "cuda" or (c.device == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    amp = bool(c.amp and use_cuda)
    torch.manual_seed(c.seed)
    trainee = Trainee(c, folder.num_classes)
    if world > 1 and c.sync_bn:
        trainee = distributed.convert_sync_batchnorm(trainee)
    trainee.to(device)
    steps_per_epoch = len(folder.paths) // c.batch_size
    total_steps = c.epochs * steps_per_epoch
    if c.max_steps:
        total_steps = min(total_steps, c.max_steps)
    dataset = data_lib.TrainSet(folder, c.input_size, data_lib.parse_augment(c.augment), c.seed)
    threads = set_threads(c.threads)
    workers = c.workers if c.workers >= 0 else default_workers()
    return Plan(c, rank, local_rank, world, device, amp, threads, workers, folder, excluded,
                _identity(c, folder), trainee, make_optimizer(c, trainee),
                torch.amp.GradScaler("cuda", enabled=amp), dataset, steps_per_epoch,
                total_steps)


@dataclasses.dataclass
class History:
    """Where the run stands: steps and epochs done (the last epoch possibly cut short by
    --max_steps), the rows of steps.csv and history.csv, and the seconds of training in
    the sessions before this one."""
    step: int = 0
    epoch: int = 0
    step_rows: list = dataclasses.field(default_factory=list)
    epoch_rows: list = dataclasses.field(default_factory=list)
    seconds_before: float = 0.0

    def end_epoch(self, sums: torch.Tensor, lr: float, seconds: float) -> dict:
        """Append the epoch's row: its mean loss and accuracy (`sums` of both and the
        step count), the last learning rate, the training seconds so far."""
        self.epoch += 1
        self.epoch_rows.append({"epoch": self.epoch, "step": self.step,
                                "loss": float(sums[0] / sums[2]),
                                "accuracy": float(sums[1] / sums[2]), "lr": lr,
                                "seconds": round(self.seconds_before + seconds, 3)})
        return self.epoch_rows[-1]


def resume(p: Plan, log) -> History:
    """Restore the model, optimizer, scaler and history from the last checkpoint in
    --out_dir (refused if its run had other settings); a fresh History without one."""
    existing = _checkpoints(p.out)
    if not existing:
        return History()
    blob = _load_checkpoint(existing[-1])
    runs.check_identity(blob["identity"], p.identity, p.out, "a run with different settings")
    restore_state(p, blob, existing[-1])
    epoch_rows = blob["epoch_rows"]
    if p.rank == 0:
        log(f"resuming after epoch {blob['epoch']} of {p.config.epochs} (step {blob['step']}) "
            f"from {existing[-1]}")
    return History(blob["step"], blob["epoch"], blob["step_rows"], epoch_rows,
                   epoch_rows[-1]["seconds"] if epoch_rows else 0.0)


def parallel(p: Plan) -> nn.Module:
    """The module the loop trains: the trainee, wrapped in DDP under torchrun."""
    if p.world == 1:
        return p.trainee
    return nn.parallel.DistributedDataParallel(
        p.trainee, device_ids=[p.local_rank] if p.device.type == "cuda" else None)


def run_loop(p: Plan, net: nn.Module, history: History, hooks) -> History:
    """Train from `history` to --epochs (or --max_steps), calling `hook(p, history)` for
    each of `hooks`, in order, at every epoch end. Ctrl-C or SIGTERM (KeyboardInterrupt,
    see cli.run_main) stops at once; the epochs finished so far are checkpointed."""
    c = p.config
    bar = tqdm(total=p.total_steps, initial=history.step, disable=not c.progress or p.rank != 0,
               unit="step", dynamic_ncols=True, file=sys.stderr)
    t0 = time.perf_counter()
    with bar:
        for epoch in range(history.epoch, c.epochs):
            if history.step >= p.total_steps:
                break
            sums, lr = train_epoch(p, net, epoch, history, bar)
            if sums[2] == 0:
                break
            history.end_epoch(sums, lr, time.perf_counter() - t0)
            for hook in hooks:
                hook(p, history)
    return history


def worker_start_method(workers: int) -> str | None:
    """How DataLoader workers start: forked (the default), except in a process that has
    loaded JAX (a notebook, the test suite), where fork() after JAX's threads started can
    deadlock a worker: there a forkserver starts them."""
    return "forkserver" if workers and "jax" in sys.modules else None


def train_epoch(p: Plan, net: nn.Module, epoch: int, history: History, bar):
    """The steps of one epoch (up to the step budget), each appended to `history`:
    (float64 sums of loss, accuracy and steps; the last learning rate)."""
    c = p.config
    sampler = data_lib.GlobalBatchSampler(len(p.dataset), c.batch_size, rank=p.rank,
                                          world=p.world, seed=c.seed, epoch=epoch)
    loader = torch.utils.data.DataLoader(
        p.dataset, batch_sampler=sampler, num_workers=p.workers,
        pin_memory=p.device.type == "cuda", persistent_workers=False,
        multiprocessing_context=worker_start_method(p.workers))
    net.train()
    torch.manual_seed(c.seed * 100_003 + epoch)  # dropout: the same after a resume
    sums, lr = torch.zeros(3, dtype=torch.float64), None
    for images, labels in loader:
        if history.step >= p.total_steps:
            break
        lr = lr_at(c, history.step, p.steps_per_epoch)
        loss, accuracy = train_step(p, net, images, labels, lr, history.step)
        history.step += 1
        history.step_rows.append({"step": history.step, "epoch": epoch + 1, "loss": loss,
                                  "accuracy": accuracy, "lr": lr})
        sums += torch.tensor([loss, accuracy, 1.0], dtype=torch.float64)
        bar.update(1)
        bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.3f}", acc=f"{accuracy:.3f}")
    return sums, lr


def train_step(p: Plan, net: nn.Module, images, labels, lr: float, step: int):
    """One SGD step at `lr`: (loss, accuracy), each the mean over the processes."""
    for group in p.optimizer.param_groups:
        group["lr"] = lr
    images = images.to(p.device, non_blocking=True)
    labels = labels.to(p.device, non_blocking=True)
    with torch.autocast(device_type=p.device.type, dtype=torch.float16, enabled=p.amp):
        loss, accuracy = net(images, labels)
    p.optimizer.zero_grad(set_to_none=True)
    p.scaler.scale(loss).backward()
    p.scaler.step(p.optimizer)
    p.scaler.update()
    figures = distributed.mean_over_processes(
        torch.stack([loss.detach().float(), accuracy.float()]).cpu())
    loss_value, acc_value = float(figures[0]), float(figures[1])
    if not math.isfinite(loss_value):
        raise diverged(p, f"the loss is {loss_value} at step {step + 1}")
    return loss_value, acc_value


def check_finite_weights(p: Plan, step: int) -> None:
    """RunFailed when the last steps left NaN or Inf in the weights (a step's loss is
    taken before its update, so the loss check alone misses the last one): no checkpoint
    or model.pt holding them is written."""
    for name, value in p.trainee.state_dict().items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise diverged(p, f"{name} holds NaN or Inf after step {step}")


def diverged(p: Plan, what: str) -> RunFailed:
    kept = _checkpoints(p.out)
    where = (f" in a new --out_dir ({p.out} keeps its checkpoints up to {kept[-1].stem} and "
             "resumes only with its own settings)" if kept else "")
    return RunFailed(f"training diverged: {what} (--lr={p.config.lr:g}); lower --lr{where}")


# Epoch-end hooks: hook(plan, history), called by run_loop after each epoch -------------------

def epoch_end_hooks(p: Plan, log, extra=()) -> list:
    """The hooks of this process, in order: only process 0 logs and writes."""
    if p.rank != 0:
        return []
    return ([] if p.config.progress else [log_epoch(log)]) + [save_epoch, *extra]


def log_epoch(log):
    """A hook logging the epoch's figures (instead of the progress bar)."""
    def hook(p: Plan, history: History) -> None:
        row = history.epoch_rows[-1]
        log(f"epoch {row['epoch']}: loss={row['loss']:.4f} accuracy={row['accuracy']:.4f} "
            f"lr={row['lr']:g}")
    return hook


def save_epoch(p: Plan, history: History) -> None:
    """A hook checkpointing a complete epoch (not one cut short by --max_steps), then
    rewriting steps.csv, history.csv and curves.png."""
    if history.step != history.epoch * p.steps_per_epoch:
        return
    check_finite_weights(p, history.step)
    _save_checkpoint(p, history)
    _write_outputs(p.out, p.config, p.trainee, history.step_rows, history.epoch_rows)


def run(c: TrainConfig, *, log=None, hooks=()) -> dict:
    """Train (or resume) and write the outputs; returns the report (rank 0) or {}.
    `hooks`: more epoch-end hooks `hook(plan, history)`, called on process 0 after the
    epoch's checkpoint (e.g. a verification on held-out pairs, as arcface_torch's
    CallBackVerification); the model is `plan.trainee.model`."""
    started = time.time()
    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    joins = not distributed.is_distributed()  # a caller's own group is the caller's to end
    try:
        return _run(c, started, log, hooks)
    finally:
        if joins:
            distributed.leave()


def _run(c: TrainConfig, started: float, log, hooks) -> dict:
    p = plan(c)
    history = resume(p, log)
    net = parallel(p)
    if p.rank == 0:
        p.out.mkdir(parents=True, exist_ok=True)
        log(f"{len(p.folder.paths)} images of {p.folder.num_classes} identities; {c.arch} "
            f"(width {c.width}, input {c.input_size}) + {c.head}; {p.world} process(es) on "
            f"{p.device}{' with AMP' if p.amp else ''}, {p.threads} threads, {p.workers} "
            f"loader workers; {p.steps_per_epoch} steps per epoch")
    history = run_loop(p, net, history, epoch_end_hooks(p, log, hooks))
    report = finish(p, history, started, log) if p.rank == 0 else {}
    if distributed.is_distributed():
        torch.distributed.barrier()
    return report


def finish(p: Plan, history: History, started: float, log) -> dict:
    """The final outputs (model.pt, report.json, CSVs, curves); returns the report."""
    check_finite_weights(p, history.step)
    report = _write_outputs(p.out, p.config, p.trainee, history.step_rows, history.epoch_rows,
                            final=True,
                            extra={"world_size": p.world, "device": str(p.device), "amp": p.amp,
                                   "torch_threads": p.threads, "loader_workers": p.workers,
                                   "num_images": len(p.folder.paths),
                                   "num_classes": p.folder.num_classes,
                                   "excluded_images": p.excluded,
                                   "steps_per_epoch": p.steps_per_epoch,
                                   "wall_seconds": round(time.time() - started, 3)})
    last = history.step_rows[-1]
    log(f"done: {history.step} steps, loss {last['loss']:.4f}, training accuracy "
        f"{last['accuracy']:.4f} -> {p.out}")
    return report


CHECKPOINT_KEYS = ("identity", "trainee", "optimizer", "scaler", "epoch", "step",
                   "step_rows", "epoch_rows")


def _load_checkpoint(path: Path) -> dict:
    """The checkpoint at `path`, verified against checksums.json; the rest of it is
    checked by `restore_state` (a file with a matching checksum may still be crafted),
    after the caller has compared its identity with the run's."""
    integrity.verify(path.parent, path.name, path.parent, path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is bad input
        raise _bad_checkpoint(path, f"it cannot be read ({type(e).__name__})") from None
    if not isinstance(blob, dict) or any(k not in blob for k in CHECKPOINT_KEYS):
        raise _bad_checkpoint(path, "not a bridges.train checkpoint")
    if not isinstance(blob["identity"], dict):
        raise _bad_checkpoint(path, f"its identity is a {type(blob['identity']).__name__}, "
                              "not a dict")
    return blob


def _bad_checkpoint(path: Path, problem: str) -> InputError:
    return InputError(f"checkpoint {path}: {problem}; delete it to resume from the one "
                      "before, or use a new --out_dir")


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def checkpoint_problem(blob: dict, steps_per_epoch: int) -> str | None:
    """What is wrong with the plain entries of a checkpoint, or None: the counts, the
    rows of steps.csv / history.csv it carries, the types of the state dicts."""
    epoch, step = blob["epoch"], blob["step"]
    if not (_is_count(epoch) and _is_count(step) and step == epoch * steps_per_epoch):
        return (f"epoch {epoch!r} and step {step!r} do not end an epoch of "
                f"{steps_per_epoch} steps")
    for key, columns, count in (("step_rows", STEP_COLUMNS, step),
                                ("epoch_rows", EPOCH_COLUMNS, epoch)):
        rows = blob[key]
        if not isinstance(rows, list) or len(rows) != count:
            return f"its {key} are not a list of {count} rows"
        for row in rows:
            if not (isinstance(row, dict) and all(
                    isinstance(row.get(c), int | float) and not isinstance(row.get(c), bool)
                    and math.isfinite(row[c]) for c in columns)):
                return f"a row of its {key} is not {', '.join(columns)} as finite numbers"
    for key in ("optimizer", "scaler"):
        if not isinstance(blob[key], dict):
            return f"its {key} is a {type(blob[key]).__name__}, not a dict"
    return None


def restore_state(p: Plan, blob: dict, path: Path) -> None:
    """Load the trainee, optimizer and grad scaler states of a checkpoint of this run
    (same identity), each checked first: counts and rows (`checkpoint_problem`), weights
    (`weights_problem`), the optimizer's settings and momentum buffers."""
    problem = checkpoint_problem(blob, p.steps_per_epoch) or weights_problem(
        blob["trainee"], p.trainee.state_dict(), "its model and head weights",
        "this run's model")
    if problem:
        raise _bad_checkpoint(path, problem)
    fresh = [{k: v for k, v in g.items() if k not in ("params", "lr")}
             for g in p.optimizer.state_dict()["param_groups"]]
    try:
        p.trainee.load_state_dict(blob["trainee"])
        p.optimizer.load_state_dict(blob["optimizer"])
        if p.amp and blob["scaler"]:  # empty when the run so far had no AMP
            p.scaler.load_state_dict(blob["scaler"])
    except Exception as e:  # noqa: BLE001 - a crafted or foreign state
        raise _bad_checkpoint(path, f"its state does not fit this run ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:120]})") from None
    groups = [{k: v for k, v in g.items() if k not in ("params", "lr")}
              for g in p.optimizer.state_dict()["param_groups"]]
    if groups != fresh:
        raise _bad_checkpoint(path, "its optimizer settings differ from this run's")
    for group in p.optimizer.param_groups:
        for param in group["params"]:
            buffer = p.optimizer.state.get(param, {}).get("momentum_buffer")
            if buffer is not None and not (isinstance(buffer, torch.Tensor)
                                           and buffer.shape == param.shape
                                           and torch.isfinite(buffer).all()):
                raise _bad_checkpoint(path, "a momentum buffer does not fit its parameter "
                                      "or is not finite")


def _save_checkpoint(p: Plan, history: History) -> None:
    c, trainee = p.config, p.trainee
    blob = {"spec": model_spec(c), "model": _plain_state(trainee.model),
            "trainee": trainee.state_dict(), "optimizer": p.optimizer.state_dict(),
            "scaler": p.scaler.state_dict(), "epoch": history.epoch, "step": history.step,
            "step_rows": history.step_rows, "epoch_rows": history.epoch_rows,
            "identity": p.identity}
    path = p.out / "checkpoints" / f"epoch_{history.epoch:03d}.pt"
    kept = [q.name for q in _checkpoints(p.out)] + [path.name]
    _save_torch(path, blob, ledger_keep=kept[-max(c.keep_checkpoints, 1):])
    for old in _checkpoints(p.out)[:-max(c.keep_checkpoints, 1)]:
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
