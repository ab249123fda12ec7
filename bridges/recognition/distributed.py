"""torchrun / DDP helpers that are no-ops in a single process.

`SyncBatchNorm` normalises with the statistics of the global batch on any backend
(torch's own SyncBatchNorm runs on GPUs only), so a run's losses do not depend on how
many processes share the batch: a 2-process CPU run matches the 1-process run.
"""

import os

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def init_from_env() -> tuple[int, int, int]:
    """Join the process group torchrun describes in the environment; (rank, local rank,
    world size), (0, 0, 1) outside torchrun. gloo on CPU, NCCL with GPUs."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return rank(), int(os.environ.get("LOCAL_RANK", "0")), world_size()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return dist.get_rank(), local_rank, dist.get_world_size()


def leave() -> None:
    """Destroy the process group, if any. Every process must before it exits: a gloo
    group left to interpreter shutdown can abort the process ("terminate called without
    an active exception", SIGABRT), which fails the whole torchrun job."""
    if is_distributed():
        dist.destroy_process_group()


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenation of `x` from every process in rank order (no gradient); equal sizes."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def mean_over_processes(x: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of a per-process mean across processes (no gradient)."""
    if not is_distributed():
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / world_size()


def global_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over processes that gradients flow through (each process receives the
    gradient of the global loss with respect to its own part)."""
    if not is_distributed():
        return x
    return _AllReduceSum.apply(x)


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the backward pass sums the incoming gradients the same way
    (each process's loss depends on every process's part), and DDP's averaging of
    parameter gradients then yields the gradient of the mean loss."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class SyncBatchNorm(nn.BatchNorm2d):
    """Batch norm over the global batch (also for (B, C) inputs); identical to
    nn.BatchNorm in one process."""

    def _check_input_dim(self, input):
        if input.dim() not in (2, 4):
            raise ValueError(f"expected 2-D or 4-D input, got {input.dim()}-D")

    def forward(self, x):
        if not (self.training and is_distributed()):
            return super().forward(x)
        dims = [0] if x.dim() == 2 else [0, 2, 3]
        shape = [1, -1] if x.dim() == 2 else [1, -1, 1, 1]
        c = x.shape[1]
        # Two passes (mean, then squared deviations): E[x^2] - E[x]^2 loses the variance
        # of nearly constant channels to cancellation in float32.
        count = torch.tensor([x.numel() / c], dtype=x.dtype, device=x.device)
        sums = global_sum(torch.cat([x.sum(dims), count]))
        n = sums[-1]
        mean = sums[:c] / n
        var = global_sum(((x - mean.reshape(shape)) ** 2).sum(dims)) / n
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            unbiased = var * (n / (n - 1)).clamp_min(1)
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
            self.running_var.mul_(1 - self.momentum).add_(self.momentum * unbiased)
        out = (x - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + self.eps)
        if self.affine:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        return out


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm1d/2d in `module` by `SyncBatchNorm` with the same state."""
    if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d) and not isinstance(
            module, SyncBatchNorm):
        new = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats)
        new.load_state_dict(module.state_dict())
        if module.affine:
            new.weight.requires_grad = module.weight.requires_grad
            new.bias.requires_grad = module.bias.requires_grad
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_sync_batchnorm(child))
    return module
