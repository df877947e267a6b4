"""The training loop: SGD over an iteration-indexed schedule, resumable, single- or multi-process.

``train(model, profile, out_dir, train_cfg)`` writes to ``out_dir``:

* ``log.jsonl``: one JSON line per iteration (``iter`` = iterations completed, ``epoch``, ``lr``,
  ``loss``, each ``loss_*`` term, each ``stat_*`` statistic a head reports (logged, not optimised),
  ``grad_norm`` when clipping, ``time``, ``data_time``, ``imgs_per_s``).
  Losses are the global batch's (averaged over processes). On resume the log is cut back to the
  checkpoint's iteration, so a resumed run's log equals an uninterrupted one's apart from timings.
* ``checkpoint.pt``: every ``checkpoint_every`` iterations, at the end, and when interrupted.
  A run finding one resumes from it (model, optimiser, iteration, random states); a checkpoint of
  another configuration is refused (:mod:`replicate.engine.checkpoint`).
* ``detections.json`` and ``metrics.json`` at the end (``eval_at_end``): every process predicts a
  contiguous shard of the val split, rank 0 gathers the shards in order, evaluates and writes
  (:mod:`replicate.engine.evaluate`, which also scores any further test configs in the same pass).

SIGTERM and SIGUSR2 (what SLURM sends before a time limit or preemption) set a flag; the loop then
finishes the current iteration, checkpoints and returns ``{"status": "interrupted", ...}``; the
previous handlers are restored on return. With several processes the flag is OR-ed over ranks each
iteration so that all of them stop at the same iteration.

Multi-process runs (torchrun, SLURM; see :mod:`replicate.engine.distributed`) wrap the model in
DistributedDataParallel. Each rank reads ``batch_size / world_size`` images of the global batch
(:mod:`replicate.engine.sampler`) and the images are padded to one size across ranks, so that the
loss is that of one process with the whole batch: the heads normalise by the global number of
positives (:func:`replicate.models._utils.mean_over_ranks`) and FCOS counts padded locations as
negatives, which per-rank padding would change.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.batching import Collate, ImageBatch
from ..data.profiles import build_dataset, data_config, ensure_data
from ..errors import ReplicateError
from ..profiles import schedule_for
from ..io import atomic_write_json, atomic_write_text, dump_json
from ..models._utils import set_group_norm_layout
from ..models.detector import DetectorConfig, build_detector, trains_masks, weights_fields
from ..models.postprocess import TestConfig
from ..models.zoo import MODELS, model_config
from ..provenance import config_hash, jsonable, provenance
from . import distributed as du
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, restore, save_checkpoint
from .config import TrainConfig, run_identity
from .evaluate import evaluate_tests
from .pretrain import ensure_pretrained
from .inference import autocast
from .sampler import EpochDataset, IterationBatchSampler
from .schedule import lr_at

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(device: str | None) -> torch.device:
    """``None``: CUDA if available, else CPU. On CUDA a process uses its local rank's device."""
    name = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ReplicateError(f"device must be 'cpu' or 'cuda', got {name!r}")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ReplicateError("--device cuda requested but torch sees no CUDA device")
        return torch.device("cuda", du.local_rank())
    return torch.device("cpu")


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """SGD groups: weights, and biases with ``bias_lr_mult`` / ``bias_decay_mult`` (mmdetection's
    ``paramwise_cfg``); each group keeps its ``lr_mult`` for :func:`lr_at`."""
    weights, biases = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (biases if name.endswith(".bias") else weights).append(p)
    groups = [{"params": weights, "lr_mult": 1.0, "weight_decay": cfg.weight_decay}]
    if biases:
        groups.append({"params": biases, "lr_mult": cfg.bias_lr_mult,
                       "weight_decay": cfg.weight_decay * cfg.bias_decay_mult})
    return groups


@contextmanager
def stop_flag() -> Iterator[threading.Event]:
    """An event set by SIGTERM / SIGUSR2 while inside the block (handlers restored on exit).

    Handlers can only be installed from the main thread; elsewhere the event is never set by signals.
    """
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return
    previous = {s: signal.signal(s, lambda signum, frame: event.set()) for s in STOP_SIGNALS}
    try:
        yield event
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class JsonlLog:
    """``log.jsonl`` of rank 0: cut back to ``keep_until`` iterations on open, then appended to."""

    def __init__(self, path: Path, keep_until: int, enabled: bool) -> None:
        self.path, self.fh = path, None
        if not enabled:
            return
        kept = []
        if keep_until > 0 and path.is_file():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and _json_iter(line) <= keep_until]
        atomic_write_text(path, "".join(line + "\n" for line in kept))
        self.fh = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if self.fh is not None:
            self.fh.write(dump_json(record) + "\n")
            self.fh.flush()

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


def _json_iter(line: str) -> int:
    return int(json.loads(line)["iter"])


def pad_to(batch: ImageBatch, h: int, w: int) -> ImageBatch:
    """The batch padded (bottom/right, zeros like :class:`Collate`) to at least ``h`` x ``w``."""
    dh, dw = h - batch.images.shape[-2], w - batch.images.shape[-1]
    if dh == 0 and dw == 0:
        return batch
    return dataclasses.replace(batch, images=F.pad(batch.images, (0, dw, 0, dh)))


def _global_pad(batch: ImageBatch) -> ImageBatch:
    """Pad every rank's batch to the largest padded size over ranks (see the module docstring)."""
    if not du.is_distributed():
        return batch
    size = torch.tensor(batch.images.shape[-2:], dtype=torch.int64, device=batch.images.device)
    dist.all_reduce(size, op=dist.ReduceOp.MAX)
    return pad_to(batch, int(size[0]), int(size[1]))


def _reduce_for_log(losses: dict[str, torch.Tensor], stop: bool) -> tuple[dict[str, float], bool]:
    """Loss terms averaged over ranks (= the global batch's loss) and the stop flag OR-ed over ranks."""
    flag = torch.tensor(float(stop), device=next(iter(losses.values())).device)
    values = torch.stack([v.detach().float() for v in losses.values()] + [flag])
    if du.is_distributed():
        dist.all_reduce(values)
        values[:-1] /= du.world_size()
    out = values.cpu().tolist()
    return dict(zip(losses, out[:-1])), out[-1] > 0


def _resolve_model(model: str | DetectorConfig, profile: str, num_classes: int,
                   overrides: Mapping[str, Any] | None = None) -> DetectorConfig:
    if isinstance(model, str):
        return model_config(model, profile, num_classes, dict(overrides or {}))
    if overrides:
        raise ReplicateError("model overrides apply to a preset name; apply them to a model config before training "
                             "(replicate.models.zoo.apply_overrides)")
    if model.num_classes != num_classes:
        raise ReplicateError(f"model config {model.name!r} has {model.num_classes} classes but the "
                             f"{profile} dataset has {num_classes}")
    return model


def train(model: str | DetectorConfig, profile: str, out_dir: str | Path, train_cfg: TrainConfig | None = None, *,
          data_root: str | Path | None = None, device: str | None = None, progress: bool = True,
          stop_after: int | None = None, deadline: float | None = None, stop_file: str | Path | None = None,
          tests: Mapping[str, TestConfig] | None = None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train ``model`` (a preset name or a config) on ``profile``'s data, writing to ``out_dir``.

    ``overrides``: dotted-path changes to a preset's config (``{"task_split.stride": 8}``), applied before the
    profile narrows it, as a table row's (:func:`replicate.models.zoo.model_config`).

    ``train_cfg`` defaults to the profile's schedule (:func:`replicate.profiles.schedule_for`).
    ``deadline`` (a ``time.time()`` value): past it, training stops as on a signal (a sweep's clean stop);
    likewise once ``stop_file`` exists (a stop asked for by ``replicate stop``).
    ``tests``: further named test configs the final evaluation scores in the same pass (the result's
    ``evaluations``, name -> ``{"test", "metrics", "detections"}``; detections in ``detections-<name>.json``).
    ``stop_after=k`` behaves as if a stop signal arrived during iteration ``k`` (1-based): checkpoint
    after ``k`` iterations and return ``"interrupted"`` (for tests of resumption).

    Returns ``{"status": "interrupted", "iteration", "checkpoint"}`` or, when finished, the content
    of ``metrics.json`` plus ``iteration``, ``checkpoint`` and ``metrics_file``.
    """
    if isinstance(model, str) and model not in MODELS:
        raise ReplicateError(f"unknown model {model!r}; choose from {sorted(MODELS)} (see `replicate models`)")
    cfg = train_cfg or schedule_for(profile)
    out = Path(out_dir)
    dev = resolve_device(device)
    main, world = du.is_main(), du.world_size()
    data = data_config(profile, data_root)
    if cfg.scale is not None:
        data = data.with_scale(cfg.scale)
    if main:
        ensure_data(data, progress=progress)
    du.barrier()
    train_set = build_dataset(data, "train", train=True, seed=cfg.seed)
    model_cfg = _resolve_model(model, profile, len(train_set.cat_ids), overrides)
    train_set.masks = trains_masks(model_cfg)
    config = run_identity(weights_fields(model_cfg), cfg, profile)
    chash = config_hash(config)  # = the run's key in the results store

    if main:
        ensure_pretrained(model_cfg.backbone.weights, profile=profile, data_root=data_root, progress=progress)
    du.barrier()
    seed_everything(cfg.seed)
    net = build_detector(model_cfg).to(dev)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    set_group_norm_layout(net, cfg.gn_nchw)
    optimizer = torch.optim.SGD(param_groups(net, cfg), lr=cfg.lr, momentum=cfg.momentum)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16" and dev.type == "cuda")
    ckpt_path = out / CHECKPOINT_NAME
    start = 0
    if ckpt_path.is_file():
        start = restore(load_checkpoint(ckpt_path, expected_hash=chash), model=net, optimizer=optimizer, scaler=scaler)
    if start > cfg.iters:
        raise ReplicateError(f"{ckpt_path}: checkpoint at iteration {start}, beyond this run's {cfg.iters} iterations")
    net.train()
    ddp = nn.parallel.DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None) \
        if world > 1 else net

    sampler = IterationBatchSampler(len(train_set), cfg.batch_size, seed=cfg.seed, start=start, end=cfg.iters,
                                    rank=du.rank(), world_size=world)
    # the loader draws its workers' base seed from its own generator: from the global one it would shift the
    # random stream the model draws from (a two-stage detector's samplers) on every resume
    loader = DataLoader(EpochDataset(train_set), batch_sampler=sampler, collate_fn=Collate(data.size_divisor),
                        num_workers=cfg.num_workers, pin_memory=dev.type == "cuda",
                        generator=torch.Generator().manual_seed(cfg.seed))
    log = JsonlLog(out / "log.jsonl", start, enabled=main)

    def checkpoint(iteration: int) -> None:
        if main:
            save_checkpoint(ckpt_path, model=net, optimizer=optimizer, iteration=iteration, config=config,
                            config_hash=chash, scaler=scaler)
        du.barrier()

    params = [p for p in net.parameters() if p.requires_grad]
    bar = tqdm(total=cfg.iters, initial=start, disable=not (progress and main), dynamic_ncols=True, desc="train")
    try:
        with stop_flag() as stop:
            tick = time.perf_counter()
            for iteration, batch in enumerate(loader, start=start):
                batch = _global_pad(batch).to(dev, non_blocking=True)
                images = batch.images.contiguous(memory_format=torch.channels_last) \
                    if cfg.channels_last else batch.images
                data_time = time.perf_counter() - tick
                lr = lr_at(cfg, iteration)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group["lr_mult"]
                with autocast(dev, cfg.amp):
                    losses = ddp(images, batch.targets)
                total = sum(v for k, v in losses.items() if k.startswith("loss"))
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(total).backward()
                record: dict[str, Any] = {"iter": iteration + 1, "epoch": sampler.epoch_of(iteration), "lr": lr}
                if cfg.grad_clip is not None:
                    scaler.unscale_(optimizer)
                    record["grad_norm"] = float(nn.utils.clip_grad_norm_(params, cfg.grad_clip))
                scaler.step(optimizer)
                scaler.update()
                late = (deadline is not None and time.time() > deadline) or (stop_file is not None
                                                                             and os.path.exists(stop_file))
                terms, stopping = _reduce_for_log(losses, stop.is_set() or iteration + 1 == stop_after or late)
                loss = sum(v for k, v in terms.items() if k.startswith("loss"))
                if not math.isfinite(loss):
                    raise ReplicateError(f"training diverged: loss {loss} at iteration {iteration + 1} "
                                         f"({terms}); lower --lr or enable gradient clipping")
                elapsed = time.perf_counter() - tick
                record.update(loss=loss, **terms, time=elapsed, data_time=data_time,
                              imgs_per_s=cfg.batch_size / elapsed)
                log.write(record)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
                done = iteration + 1
                if stopping:
                    checkpoint(done)
                    return {"status": "interrupted", "iteration": done, "checkpoint": str(ckpt_path)}
                if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.iters:
                    checkpoint(done)
                tick = time.perf_counter()
    finally:
        bar.close()
        log.close()
    checkpoint(cfg.iters)
    return _evaluate_and_record(net, model_cfg, profile, data, cfg, out, dev, config, ckpt_path, tests or {})


def _evaluate_and_record(net: nn.Module, model_cfg: DetectorConfig, profile: str, data, cfg: TrainConfig, out: Path,
            dev: torch.device, config: dict[str, Any], ckpt_path: Path,
            tests: Mapping[str, TestConfig]) -> dict[str, Any]:
    """Evaluate on the val split under the model's own test config and ``tests`` in one pass
    (:func:`~replicate.engine.evaluate.evaluate_tests`) and write ``metrics.json`` on rank 0."""
    main, world = du.is_main(), du.world_size()
    metrics, evaluations, timings = None, {}, _train_timings(out / "log.jsonl", cfg) if main else {}
    if cfg.eval_at_end:
        val_set = build_dataset(data, "val", train=False, seed=cfg.seed)
        named = {"detections": None, **{f"detections-{name}": test for name, test in tests.items()}}
        scored, infer = evaluate_tests(net, val_set, named, dev, out, amp=cfg.amp, num_workers=cfg.num_workers)
        if main:
            metrics = scored["detections"]["metrics"]
            evaluations = {name: scored[f"detections-{name}"] for name in tests}
            timings.update(inference_fps=infer["inference_fps"], inference_seconds=infer["inference_seconds"])
    if dev.type == "cuda":
        timings["peak_memory_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    document = {
        "status": "finished",
        "model": model_cfg.name,
        "profile": profile,
        "metrics": metrics,
        "test": jsonable(model_cfg.test),
        "evaluations": evaluations,
        "timings": timings,
        "provenance": {**provenance(config, device=dev, world_size=world), "train_config": jsonable(cfg)},
    }
    metrics_file = out / "metrics.json"
    if main:
        atomic_write_json(metrics_file, document, indent=1)
    du.barrier()
    return {**document, "iteration": cfg.iters, "checkpoint": str(ckpt_path), "metrics_file": str(metrics_file)}


def _train_timings(log_path: Path, cfg: TrainConfig) -> dict[str, float]:
    """Training time and throughput summed over the whole log (all resumed parts)."""
    times = [json.loads(line)["time"] for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    seconds = float(sum(times))
    return {"train_seconds": seconds, "train_imgs_per_s": len(times) * cfg.batch_size / seconds if seconds else 0.0}
