"""Fit NeRVI to a renders.zarr store: one process on a CPU, or DDP over nodes × GPUs.

Rank and world size come from the environment (RANK/WORLD_SIZE/LOCAL_RANK as torchrun sets
them, or as submitit's TorchDistributedEnvironment exports them); without them it is one
process. NCCL on CUDA, gloo on CPU. Rank 0 logs (rich progress + metrics.jsonl) and writes
checkpoints; a run resumes from the newest complete checkpoint and then continues exactly as
if it had not stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ..codec.quantize import archived_weights
from ..config import DatasetSpec, TrainSpec
from ..data.dataset import RenderDataset, ResidentBatches, ShardAwareSampler, fits_resident, keep_batch
from ..model import checkpoint
from ..model.compositing import composite
from ..model.loss import loss_for, psnr
from ..model.network import NeRVI, count_parameters
from ..model.sizing import model_config
from ..paths import RunPaths
from ..progress import ProgressLog, TrainingBar
from ..schema import to_dict
from .schedule import LATEST_COOLDOWN, Cooldown, learning_rate, peak_lr, plateaued


@dataclass(frozen=True)
class Distributed:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Distributed:
    """Join the process group the environment describes (or none for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local % torch.cuda.device_count()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    return Distributed(rank, world, local, device)


DEFAULT_BATCH = 8  # 128², 3 CPU minutes: batch 8 24.4 dB; 32 18.2 dB; 4 and 2 lower per epoch too


def default_batch_size(count: int, world: int) -> int:
    """A global batch of DEFAULT_BATCH images (fewer if the collection is smaller), at least one
    per rank: small batches mean many steps, and that is what NeRVI needs to converge."""
    return max(world, min(count, DEFAULT_BATCH))


def adam(parameters: list[torch.nn.Parameter], cfg: TrainSpec, peak: float) -> torch.optim.Adam:
    """Adam in one fused kernel over all the parameters (`train.fused_adam`; the multi-tensor
    version where this torch has no fused one for the device), else torch's per-tensor loop."""
    if not cfg.fused_adam:
        return torch.optim.Adam(parameters, lr=peak, foreach=False)
    try:
        return torch.optim.Adam(parameters, lr=peak, fused=True)
    except RuntimeError:  # "fused=True requires ... supported devices"
        return torch.optim.Adam(parameters, lr=peak, foreach=True)


def uses_bf16(device: torch.device, amp: str) -> bool:
    """Whether training runs under bf16 autocast: on CUDA only; `auto` where the GPU computes in
    bf16 natively (compute capability 8 and above: A100, H100), `bf16` on any GPU."""
    if device.type != "cuda" or amp == "off":
        return False
    return amp == "bf16" or torch.cuda.get_device_capability(device)[0] >= 8


@dataclass
class TrainResult:
    checkpoint: str
    epochs: int
    steps: int
    seconds: float
    images_per_s: float
    loss: float
    psnr: float
    parameters: int
    stopped_early: bool
    weights_digest: str  # sha256 of this rank's parameters: equal on every rank of a DDP run
    converged: bool = False  # stopped by `until_gain_db`

    def summary(self) -> str:
        how = ("converged" if self.converged else "stopped at the time limit" if self.stopped_early
               else "finished")
        return (f"{how}: {self.epochs} epochs, {self.steps} steps in {self.seconds / 60:.1f} min "
                f"({self.images_per_s:.1f} img/s), loss {self.loss:.4f}, PSNR {self.psnr:.2f} dB, "
                f"{self.parameters:,} parameters → {self.checkpoint}")


class MetricsLog:
    """JSON lines a monitor can tail while training runs (rank 0 only)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a", buffering=1)

    def write(self, **record) -> None:
        self.file.write(json.dumps({"time": time.time(), **record}) + "\n")

    def close(self) -> None:
        self.file.close()


def train(run_dir: str | Path, spec: DatasetSpec, *, max_minutes: float | None = None,
          progress: bool = True) -> TrainResult:
    """Train (or resume) the run in `run_dir` on its renders.zarr; return rank 0's result."""
    paths = RunPaths(Path(run_dir))
    cfg = spec.train
    max_minutes = max_minutes if max_minutes is not None else cfg.max_minutes
    env = setup_distributed()
    data = RenderDataset(paths.store)
    mcfg = model_config(spec.model, data.height, data.width, count=data.count, grids=data.grids)
    bits = spec.model.archive_bits
    batch_size = cfg.batch_size or default_batch_size(data.count, env.world_size)
    sampler = ShardAwareSampler(data.count, data.shard_size, batch_size, env.rank, env.world_size, cfg.seed)
    if fits_resident(data.count, data.height, data.width, env.device, cfg.resident_share):
        loader = ResidentBatches(data, sampler, env.device)
    else:
        loader = torch.utils.data.DataLoader(
            data, batch_sampler=sampler, collate_fn=keep_batch, num_workers=cfg.loader_workers,
            pin_memory=env.device.type == "cuda", persistent_workers=cfg.loader_workers > 0)

    torch.manual_seed(cfg.seed)
    model = NeRVI(mcfg, data.height, data.width, len(data.param_names)).to(env.device)
    cuda = env.device.type == "cuda"
    memory_format = torch.channels_last if cuda and cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    peak = peak_lr(cfg, mcfg.c2)
    optimizer = adam(list(model.parameters()), cfg, peak)
    step = epoch = start_batch = 0
    trained_seconds = cpu_before = 0.0
    found = checkpoint.latest(paths.checkpoints)
    if found is not None:
        state, _ = checkpoint.load(found, map_location=env.device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        # resume exactly where the checkpoint stopped: `batch` is the position inside the epoch, so
        # the sampler skips the batches already seen instead of starting the epoch again
        step, epoch, start_batch = state["step"], state["epoch"], state["batch"]
        trained_seconds, cpu_before = state["seconds"], state.get("cpu_seconds", 0.0)
    cpu_start = time.process_time()

    def cpu_seconds() -> float:
        """This process's CPU time spent training (all runs of it), snapshots excluded."""
        return cpu_before + time.process_time() - cpu_start

    def budget_seconds(now: float) -> float:
        """Training time on the clock that `max_minutes`, snapshots and the cooldown count."""
        return cpu_seconds() if cfg.clock == "cpu" else now - started
    if env.world_size > 1:
        if cuda:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[env.device] if cuda else None)
    module = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    loss_fn = loss_for(mcfg.arch, cfg.mask_loss, ssim_weight=cfg.ssim_weight,
                       composite_weight=cfg.composite_weight, mask_weight=cfg.mask_weight,
                       background=data.background)
    bf16 = uses_bf16(env.device, cfg.amp)

    def forward(inputs, images, masks):
        """A batch's loss and PSNR: the network under autocast, the loss in float32 outside it
        (CUDA's autocast refuses binary_cross_entropy), the PSNR without gradient."""
        with torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=bf16):  # built here: torch.compile traces it
            output = model(inputs)
        output = output.float()
        return loss_fn(output, images, masks), psnr(composite(output.detach(), data.background, mcfg.soft), images)
    # compiled, the inductor fuses the elementwise work of the step (loss, compositing, activations)
    forward_pass = torch.compile(forward) if cfg.compile else forward
    total_steps = cfg.epochs * sampler.batches_per_epoch
    record = checkpoint.CheckpointRecord(
        dataset=to_dict(spec), model=mcfg, batch_size=batch_size, world_size=env.world_size, height=data.height,
        width=data.width, param_names=tuple(data.param_names), ranges=tuple(tuple(r) for r in data.ranges),
        background=tuple(data.background), peak_lr=peak)

    def save(stopped: bool, root: Path = paths.checkpoints, keep: int = cfg.keep_latest_k) -> Path | None:
        if not env.is_main:
            return None
        state = {"model": module.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                 "epoch": epoch, "batch": start_batch, "seconds": trained_seconds,
                 "cpu_seconds": cpu_seconds(),
                 "cooldown": None if cooldown is None else [cooldown.start, cooldown.length]}
        return checkpoint.save(root, step, state, dataclasses.replace(record, stopped_early=stopped), keep)

    def snapshot() -> None:
        """Keep the weights as they are now, BatchNorm recalibrated as at the end of training."""
        recalibrate_batchnorm(module, data.inputs.to(env.device), batch_size)
        save(False, paths.snapshots, keep=0)  # keep=0: every snapshot stays

    log = MetricsLog(paths.metrics) if env.is_main else None
    bar = TrainingBar(progress and env.is_main, cfg.epochs, epoch)
    lines = ProgressLog("train", paths.progress("train"), enabled=env.is_main and not progress)
    budget_s = 60 * max_minutes if max_minutes else None
    started = time.monotonic() - trained_seconds  # earlier sessions count: max_minutes is the run's total
    last_checkpoint = time.monotonic()
    images_seen, clock = 0, time.monotonic()
    loss_value = psnr_value = float("nan")
    stopped = converged = False
    cooldown = Cooldown(*state["cooldown"]) if found is not None and state.get("cooldown") else None
    snapshots_due = sorted(m for m in cfg.snapshot_minutes if 60 * m > budget_seconds(time.monotonic()))
    history: list[tuple[float, float]] = []  # (training seconds, epoch PSNR) since this start
    model.train()
    next_sync = step  # the clock is read (and agreed across ranks) every `sync_every` steps
    # and at each epoch's start, so a collection of few batches does not overrun its budget by epochs
    while epoch < cfg.epochs and not stopped:
        sampler.set_epoch(epoch, start_batch)
        # summed on the device, read once an epoch: a read after every step would wait for the GPU
        epoch_loss = torch.zeros((), dtype=torch.float64, device=env.device)
        epoch_psnr = torch.zeros((), dtype=torch.float64, device=env.device)
        batches = 0
        for images, masks, inputs in loader:
            images = images.to(env.device, non_blocking=True).float().div_(255)
            masks = masks.to(env.device, non_blocking=True).float()
            inputs = inputs.to(env.device, non_blocking=True)
            images = images.contiguous(memory_format=memory_format)
            synced = step >= next_sync or batches == 0
            if synced:
                next_sync = (step // cfg.sync_every + 1) * cfg.sync_every
                now = time.monotonic()
                # every rank must take the same branch below (stop, checkpoint, snapshot): a rank
                # that stops alone leaves the others waiting in the next all-reduce forever, so all
                # take the latest clock of any rank
                elapsed, since_checkpoint = _agree([budget_seconds(now), now - last_checkpoint], env)
                time_progress = elapsed / (60 * max_minutes) if max_minutes else 0.0
            # the schedule follows whichever budget runs out first, epochs or minutes, so a
            # time-bound run still warms up, peaks and decays within its minutes
            progress = max(step / total_steps, time_progress)
            if cfg.until_gain_db and cooldown is None and progress >= LATEST_COOLDOWN:
                cooldown = Cooldown(elapsed, elapsed * (1 - progress) / progress)  # the rest of the cap
            if cooldown is not None and cooldown.progress(elapsed) >= 1.0:
                stopped = converged = True
                break
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, peak, progress,
                                            None if cooldown is None else cooldown.progress(elapsed))
            # quantization-aware in the cooldown: the step's gradient is taken at the archived
            # weights and applied to the float ones (straight-through)
            in_cooldown = cooldown is not None or (not cfg.until_gain_db and progress >= 1 - cfg.cooldown_share)
            with archived_weights(module, bits, cfg.qat and in_cooldown):
                loss, batch_psnr = forward_pass(inputs, images, masks)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            optimizer.step()
            step += 1
            start_batch += 1
            batches += 1
            images_seen += len(inputs) * env.world_size
            epoch_loss += loss.detach()
            epoch_psnr += batch_psnr
            trained_seconds = time.monotonic() - started
            if synced and snapshots_due and elapsed >= 60 * snapshots_due[0]:  # `elapsed`: every rank agrees
                while snapshots_due and elapsed >= 60 * snapshots_due[0]:
                    snapshots_due.pop(0)
                paused, cpu_paused = time.monotonic(), time.process_time()
                snapshot()
                # the snapshot's BatchNorm pass and write are not training time
                started += time.monotonic() - paused
                cpu_start += time.process_time() - cpu_paused
                model.train()
            if max_minutes and time_progress >= 1.0:
                stopped = True
                break
            if synced and since_checkpoint > 60 * cfg.checkpoint_minutes:
                save(False)
                last_checkpoint = time.monotonic()
        if start_batch >= sampler.batches_per_epoch:
            epoch, start_batch = epoch + 1, 0
        if batches == 0:  # resumed from a checkpoint taken at the end of an epoch
            continue
        loss_value, psnr_value = (epoch_loss / batches).item(), (epoch_psnr / batches).item()
        rate = images_seen / max(time.monotonic() - clock, 1e-9)
        eta = (total_steps - step) * batch_size / rate if rate else float("nan")
        if env.is_main:
            spent = budget_seconds(time.monotonic())  # on the budget's clock (CPU time with clock: cpu)
            log.write(epoch=epoch, step=step, loss=loss_value, psnr=psnr_value,
                      lr=optimizer.param_groups[0]["lr"], images_per_s=rate, eta_s=eta,
                      elapsed_s=spent, epochs=cfg.epochs, budget_s=budget_s)
            if budget_s is not None:  # the time budget ends the run first when it is shorter
                eta = min(eta, max(budget_s - spent, 0.0))
            bar.update(epoch, cfg.epochs, loss_value, psnr_value, rate, eta, spent, budget_s)
            lines(epoch=epoch, epochs=cfg.epochs, loss=loss_value, psnr=psnr_value, images_per_s=rate,
                  elapsed_s=spent, budget_s=budget_s, eta_s=eta)
        if cfg.until_gain_db and cooldown is None and not stopped:
            history.append((budget_seconds(time.monotonic()), psnr_value))
            # cool down only when every rank sees the plateau (their PSNRs are of different batches)
            flat, now = _agree([float(not plateaued(history, cfg.until_gain_db)), history[-1][0]], env)
            if flat == 0.0:
                cooldown = Cooldown(now, cfg.cooldown_share * now)
    with archived_weights(module, bits, cfg.qat):  # the statistics of the weights the archive holds
        recalibrate_batchnorm(module, data.inputs.to(env.device), batch_size)
    final = save(stopped and not converged)
    bar.close()
    if log:
        log.write(event="converged" if converged else "stopped" if stopped else "done", epoch=epoch, step=step,
                  loss=loss_value, psnr=psnr_value, elapsed_s=trained_seconds)
        log.close()
    if env.world_size > 1:
        dist.barrier()
    return TrainResult(str(final or checkpoint.latest(paths.checkpoints)), epoch, step, trained_seconds,
                       images_seen / max(time.monotonic() - clock, 1e-9), loss_value, psnr_value,
                       count_parameters(module), stopped and not converged, _digest(module), converged)


@torch.no_grad()
def recalibrate_batchnorm(module: torch.nn.Module, inputs: torch.Tensor, batch_size: int) -> None:
    """Set every BatchNorm's running statistics to their average over the whole collection.

    Training updates them as a moving average of batch statistics while the weights change
    fast, so at the end they lag the network and the decoded images (eval mode) come out worse
    than in training. One forward pass over all parameter tuples (no images needed) fixes them.
    """
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    was_training = module.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass
    module.train()
    for start in range(0, len(inputs), batch_size):
        module(inputs[start:start + batch_size])
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    module.train(was_training)


def _digest(module: torch.nn.Module) -> str:
    sha = hashlib.sha256()
    for tensor in module.state_dict().values():
        sha.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()


def _agree(values: list[float], env: Distributed) -> list[float]:
    """The ranks' largest values, so every rank takes the same time-based decisions."""
    if env.world_size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()
