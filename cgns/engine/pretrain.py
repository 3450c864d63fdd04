"""The two-stage CM-CGNS pretraining loop: hand-written DDP, accumulation, AMP, checkpoints, exact resume.

Stage 1 trains losses 1-3, stage 2 adds CM-MIR (the model decides which terms a stage has: forward(batch, stage)).
Each stage gets a fresh Adam and its own warm-up + cosine schedule; stage 2 starts from the end of stage 1 or from
its best checkpoint (by validation loss), and the log says which.

The model is any nn.Module with
    forward(batch: dict, stage: int, epoch: int) -> (losses: dict name -> scalar tensor, stats: dict name -> tensor)
      (epoch: 0-based within the stage; MGCA freezes its prototypes in epoch 0, the other objectives ignore it)
    encode_image(images [B,3,S,S]) -> [B,D];  encode_text(input_ids, attention_mask, sentence_index) -> [B,D]
whose stateful parts (k-means centroids) are buffers, so the state dict is the whole model state.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field

import torch
from torch.nn.parallel import DistributedDataParallel

from cgns.config import option
from cgns.engine import checkpoint as ckpt
from cgns.distributed import (DistInfo, ResumableSampler, all_reduce_min, all_reduce_sum, barrier,
                                     is_distributed, rng_state, set_rng_state)
from cgns.distributed import exchange_row_counts, known_row_counts
from cgns.engine.logging import RunLogger, Throughput
from cgns.engine.schedule import lr_at, set_lr
from cgns.eval.retrieval import chance_recall, evaluate_retrieval

# run settings that must match for a resume to continue the same run (the model config is checked in full)
RESUME_KEYS = ("seed", "batch_size", "accum_steps", "world_size", "stage1_epochs", "stage2_epochs", "lr",
               "weight_decay", "warmup_epochs", "data_pct", "clip_grad", "amp", "stage2_init")


@dataclass
class LoopConfig:
    """The loop's settings. Defaults are the paper's (the `paper` preset); fields made with option(...) are flags of
    train_pretrain.py of the same name (see cgns/engine/pretrain_config.py for the presets)."""
    seed: int = option(42, "model init seed (all ranks); seed + rank for data order, crops and masking")
    batch_size: int = option(64, "pairs per process per micro-batch")
    accum_steps: int = option(1, "micro-batches per optimiser step (DDP no_sync on all but the last)")
    lr: float = option(1e-5, "peak Adam learning rate")
    weight_decay: float = option(1e-6, "Adam weight decay")
    warmup_epochs: float = option(1.0, "linear warm-up from 1e-7 per step, then cosine to 0; per stage")
    clip_grad: float = option(0.0, "max gradient norm (0: off)")
    amp: str = option("fp16", "mixed precision (GPU only; fp16 with a GradScaler)", choices=("none", "bf16", "fp16"))
    compile: bool = option(False, "torch.compile the image and text encoders (GPU; off by default)")
    stage1_epochs: int = option(10, "epochs of stage 1 (losses 1-3)")
    stage2_epochs: int = option(20, "epochs of stage 2 (adds CM-MIR); 0 skips it")
    stage2_init: str = option("last", "stage 2 starts from the end of stage 1 or its best validation checkpoint",
                              choices=("last", "best"))
    save_every: int = option(200, "optimiser steps between checkpoints/latest.pt (0: only at epoch/stage ends)")
    log_every: int = option(10, "optimiser steps between log.jsonl lines")
    max_steps: int = option(0, "stop after this many optimiser steps in all (0: no limit; the schedule is unchanged)")
    max_bad_steps: int = option(5, "consecutive non-finite losses before the run stops")
    num_workers: int = option(0, "DataLoader worker processes")
    progress: bool = option(True, "tqdm progress bar")
    data_pct: float = 1.0                # set from the data section (recorded here for the resume check)
    validate: bool = True


@dataclass
class Progress:
    """Where the run is; saved in every checkpoint. batch_in_epoch = micro-batches this rank consumed."""
    stage: int = 1
    epoch: int = 0
    stage_step: int = 0
    global_step: int = 0
    batch_in_epoch: int = 0
    best_val_loss: float = math.inf
    bad_steps: int = 0
    stage2_from: str = ""
    history: list = field(default_factory=list)   # (stage, epoch, val metrics) per validation


class NonFiniteLossError(FloatingPointError):
    pass


def move_to(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def total_loss(losses: dict) -> torch.Tensor:
    """Sum of the named terms (each already carries its weight); a 'total' key, if present, is not re-added."""
    return sum(v for k, v in losses.items() if k != "total")


class Pretrainer:
    """Owns model, DDP wrapper, optimiser, scaler, loaders and progress for one pretraining run."""

    def __init__(self, model: torch.nn.Module, *, train_set, val_set, collate_fn, cfg: LoopConfig, info: DistInfo,
                 output_dir, model_config: dict, run_args: dict | None = None, extra_state: dict | None = None):
        self.raw = prepare_for_device(model.to(info.device), info.device, compile_towers=cfg.compile)
        self.train_set, self.val_set, self.collate_fn = train_set, val_set, collate_fn
        self.cfg, self.info, self.output_dir = cfg, info, output_dir
        self.model_config = model_config
        self.run_args = dict(run_args or {})
        self.extra_state = dict(extra_state or {})
        self.device = info.device
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        # find_unused_parameters: the CM-MIR decoder exists in stage 1 but gets no gradient there
        self.model = (DistributedDataParallel(self.raw, device_ids=[info.local_rank] if info.device.type == "cuda"
                                              else None, find_unused_parameters=True)
                      if is_distributed() else self.raw)
        self.sampler = ResumableSampler(len(train_set), rank=info.rank, world_size=info.world_size, shuffle=True,
                                        seed=cfg.seed, pad=True)
        micro_per_epoch = len(self.sampler) // cfg.batch_size
        self.steps_per_epoch = micro_per_epoch // cfg.accum_steps
        if self.steps_per_epoch == 0:
            raise ValueError(f"training split has {len(train_set)} pairs: too few for one optimiser step of "
                             f"{cfg.batch_size} x {cfg.accum_steps} accumulation x {info.world_size} processes")
        self.progress = Progress()
        self.optimizer = self._new_optimizer()
        self._reset_health()
        self._train_loader = None
        self.logger = RunLogger(output_dir, info.is_main)
        self.last_val: dict = {}
        self._loss_sums: dict = {}
        self._loss_count = 0
        self._throughput = Throughput()

    # ---------------------------------------------------------------- set-up pieces
    def _amp_dtype(self):
        if self.cfg.amp == "none":
            return None
        if self.device.type != "cuda":
            raise ValueError(f"--amp {self.cfg.amp} needs a GPU; on {self.device.type} use --amp none")
        return {"bf16": torch.bfloat16, "fp16": torch.float16}[self.cfg.amp]

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def _new_optimizer(self):
        self._step_copies = {}  # guarded_step's buffers, one per parameter / state tensor of this optimiser
        params = [p for p in self.raw.parameters() if p.requires_grad]
        # On a GPU the fused kernel: one launch, and it skips a flagged step on the device (found_inf). On the CPU
        # the default implementation, whose figures the demo prints (fused rounds differently in the last bit).
        fused = {"fused": True} if self.device.type == "cuda" else {}
        return torch.optim.Adam(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay, **fused)

    def stage_epochs(self, stage: int) -> int:
        return self.cfg.stage1_epochs if stage == 1 else self.cfg.stage2_epochs

    def _loader(self, dataset, sampler, batch_size, drop_last, persistent=False):
        # On a GPU: pinned batches (the copy to the device does not wait) and 4 batches prefetched per worker;
        # persistent workers for the training loader, which is then built once and iterated once per epoch.
        workers, cuda = self.cfg.num_workers, self.device.type == "cuda"
        return torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, collate_fn=self.collate_fn,
            num_workers=workers, pin_memory=cuda, persistent_workers=persistent and cuda and workers > 0,
            prefetch_factor=4 if cuda and workers > 0 else None,
            # its own generator, so creating an iterator never draws from the global RNG (exact resume)
            generator=torch.Generator().manual_seed(self.cfg.seed + self.info.rank))

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        rngs = [None] * self.info.world_size
        if is_distributed():
            torch.distributed.all_gather_object(rngs, rng_state())
        else:
            rngs = [rng_state()]
        return {"model": self.raw.state_dict(), "config": self.model_config, "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "step": self.progress.global_step, "stage": self.progress.stage,
                "epoch": self.progress.epoch, "progress": asdict(self.progress), "loop": asdict(self.cfg),
                "args": self.run_args, "rng": rngs, "world_size": self.info.world_size,
                "data": {"epoch": self.progress.epoch, "batch_in_epoch": self.progress.batch_in_epoch,
                         "seed": self.cfg.seed}, **self.extra_state}

    def save(self, *names: str) -> None:
        """Write the current state under checkpoints/<name> for each name (rank 0 writes, all ranks wait)."""
        self._check_health()  # Progress.bad_steps up to date in the checkpoint
        state = self.state_dict()  # collective: every rank takes part
        if self.info.is_main and self.output_dir is not None:
            for name in names:
                ckpt.save_checkpoint(ckpt.checkpoint_dir(self.output_dir) / name, state)
        barrier()

    def resume(self, path) -> None:
        """Continue exactly where the checkpoint left off; refuse one from another configuration."""
        state = ckpt.load_checkpoint(path, map_location="cpu")
        saved_config = state.get("config", {})
        if "method" in self.model_config:   # one pretraining objective per run (checkpoints before --method: cgns)
            saved_config = {"method": "cgns", "objective": {}, **saved_config}
            if saved_config["method"] != self.model_config["method"]:
                raise ValueError(f"checkpoint {path} was written by a --method {saved_config['method']} run; this "
                                 f"run is --method {self.model_config['method']}: refusing to resume it. Use "
                                 f"another --output-dir, or --method {saved_config['method']}.")
        ckpt.check_compatible(path, saved_config, self.model_config, "model configuration",
                              defaults=ckpt.config_defaults(getattr(self.raw, "config", None)))
        current = {k: v for k, v in {**asdict(self.cfg), "world_size": self.info.world_size}.items()
                   if k in RESUME_KEYS}
        saved = {**state.get("loop", {}), "world_size": state.get("world_size")}
        ckpt.check_compatible(path, saved, current, "run configuration", keys=RESUME_KEYS,
                              defaults=ckpt.config_defaults(self.cfg))
        self.raw.load_state_dict(state["model"], strict=True)
        self.progress = Progress(**state["progress"])
        self.optimizer = self._new_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"][self.info.rank])
        self._reset_health(self.progress.bad_steps)
        self.logger.event(f"resumed from {path} at stage {self.progress.stage}, epoch {self.progress.epoch}, "
                          f"step {self.progress.global_step} (batch {self.progress.batch_in_epoch} of the epoch)",
                          step=self.progress.global_step, stage=self.progress.stage)

    # ---------------------------------------------------------------- the run
    def fit(self) -> dict:
        """Run (or finish) both stages; returns the last validation metrics."""
        p = self.progress
        try:
            while p.stage <= 2:
                if p.epoch >= self.stage_epochs(p.stage) or self._stop():
                    if self._stop():
                        break
                    self._end_stage()
                    continue
                self._train_epoch()
                if self._stop() and p.batch_in_epoch:  # stopped mid-epoch (max_steps)
                    self.save(ckpt.LATEST)
                    break
                self._end_epoch()
        except BaseException:
            self.logger.close()
            raise
        self.logger.close_bar()
        if not self.last_val and self.cfg.validate:
            self.last_val = self.validate()
        self.logger.close()
        return self.last_val

    def _stop(self) -> bool:
        return bool(self.cfg.max_steps) and self.progress.global_step >= self.cfg.max_steps

    def _end_epoch(self) -> None:
        p = self.progress
        p.epoch += 1
        p.batch_in_epoch = 0
        names = [ckpt.LATEST]
        if self.cfg.validate:
            self.last_val = self.validate()
            p.history.append({"stage": p.stage, "epoch": p.epoch, **self.last_val})
            if p.stage == 1 and self.last_val.get("val/loss/total", math.inf) < p.best_val_loss:
                p.best_val_loss = self.last_val["val/loss/total"]
                names.append("stage1_best.pt")
        self.save(*names)

    def _end_stage(self) -> None:
        """Stage 1 -> 2 switch (fresh optimiser and schedule), or the end of the run after stage 2."""
        p = self.progress
        if p.stage == 2 or self.cfg.stage2_epochs == 0:
            self.save(ckpt.LATEST, ckpt.FINAL)
            p.stage = 3
            return
        self.save("stage1_last.pt")
        source = "the end of stage 1 (stage1_last.pt)"
        if self.cfg.stage2_init == "best":
            best = None if self.output_dir is None else ckpt.checkpoint_dir(self.output_dir) / "stage1_best.pt"
            if best is not None and best.is_file():
                self.raw.load_state_dict(ckpt.load_checkpoint(best)["model"], strict=True)
                source = f"the best stage-1 checkpoint ({best.name}, val/loss/total={p.best_val_loss:.4f})"
            else:
                source += " because no stage1_best.pt exists (no validation ran)"
        p.stage, p.epoch, p.stage_step, p.batch_in_epoch, p.bad_steps = 2, 0, 0, 0, 0
        self._reset_health()
        p.stage2_from = source
        self.optimizer = self._new_optimizer()
        self.logger.event(f"stage 2 (adds CM-MIR) starts from {source}", step=p.global_step, stage=2)
        self.save(ckpt.LATEST)

    # ---------------------------------------------------------------- one epoch
    def _train_epoch(self) -> None:
        p, cfg = self.progress, self.cfg
        micro_per_epoch = self.steps_per_epoch * cfg.accum_steps
        self.sampler.set_epoch(p.epoch + 1000 * (p.stage - 1), start=p.batch_in_epoch * cfg.batch_size)
        if self._train_loader is None or not self._train_loader.persistent_workers:
            self._train_loader = self._loader(self.train_set, self.sampler, cfg.batch_size, drop_last=True,
                                              persistent=True)
        batches = iter(self._train_loader)
        total_steps = self.steps_per_epoch * self.stage_epochs(p.stage)
        warmup_steps = round(cfg.warmup_epochs * self.steps_per_epoch)
        if cfg.progress:
            self.logger.start_bar(self.steps_per_epoch, p.batch_in_epoch // cfg.accum_steps,
                                  f"stage {p.stage} epoch {p.epoch + 1}/{self.stage_epochs(p.stage)}")
        self.raw.train()
        self._throughput.reset()
        while p.batch_in_epoch < micro_per_epoch and not self._stop():
            lr = lr_at(p.stage_step, base_lr=cfg.lr, warmup_steps=warmup_steps, total_steps=total_steps)
            set_lr(self.optimizer, lr)
            stepped = self._optimizer_step([next(batches) for _ in range(cfg.accum_steps)])
            p.batch_in_epoch += cfg.accum_steps
            p.stage_step += 1
            p.global_step += 1
            self._after_step(stepped, lr)
        self.logger.close_bar()

    def _optimizer_step(self, micro_batches: list) -> torch.Tensor:
        """Forward/backward every micro-batch (gradients synchronised on the last only), then one update.

        Returns a device bool, False when a loss was NaN/inf on any rank: then no rank's parameters or optimiser
        state change. Nothing here reads a device value on the host (the flag is read at log and save steps).
        """
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        step_sums, step_stats = {}, None
        for i, batch in enumerate(micro_batches):
            counts = exchange_row_counts(batch.get("row_counts"))  # host integers over a CPU group: no device read
            batch = move_to(batch, self.device)
            last = i == len(micro_batches) - 1
            sync = contextlib.nullcontext() if last or self.model is self.raw else self.model.no_sync()
            with sync:
                with self.autocast(), known_row_counts(counts):
                    losses, stats = self.model(batch, stage=self.progress.stage, epoch=self.progress.epoch)
                    loss = total_loss(losses)
                self.scaler.scale(loss / len(micro_batches)).backward()
            finite = finite & torch.isfinite(loss.detach())
            for name, value in {**losses, "total": loss}.items():
                step_sums[name] = step_sums.get(name, 0.0) + value.detach().float()
            step_stats = stats
            self._throughput.add(int(batch["image"].shape[0]) * self.info.world_size)
        # every rank must agree to skip (their parameters must stay identical): one small all-reduce, no host read
        finite = all_reduce_min(finite.to(torch.int32).reshape(1))[0].bool()
        self._guarded_update(finite)
        self.optimizer.zero_grad(set_to_none=True)
        self._accumulate(step_sums, step_stats, finite, len(micro_batches))
        return finite

    def _guarded_update(self, finite: torch.Tensor) -> None:
        """Clip and step, with the step's effect on parameters AND optimiser state (moments, step count) dropped on
        the device where finite is False."""
        bad = ~finite
        if self.scaler.is_enabled():  # fp16: the scaler skips a step whose gradients hold an inf/NaN
            poisoned = next(p.grad for p in self.raw.parameters() if p.grad is not None)
            poisoned.add_(torch.where(bad, float("nan"), 0.0).to(poisoned.dtype))
        if self.cfg.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            self._grad_norm = torch.nn.utils.clip_grad_norm_(self.raw.parameters(), self.cfg.clip_grad)
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif self.optimizer.defaults.get("fused"):
            self.optimizer.found_inf = bad.float()  # the fused kernel leaves everything as it was
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.found_inf
        else:
            guarded_step(self.optimizer, bad, self._step_copies)

    def _accumulate(self, step_sums: dict, stats: dict, finite: torch.Tensor, micro_steps: int) -> None:
        """Add a step's loss sums to the log window (a skipped step adds nothing; all on the device)."""
        for name, value in step_sums.items():
            self._loss_sums[name] = self._loss_sums.get(name, 0.0) + torch.where(finite, value, 0.0)
        self._loss_count = self._loss_count + finite.float() * micro_steps
        self._last_stats = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in stats.items()}

    # ---------------------------------------------------------------- non-finite steps, counted on the device
    def _reset_health(self, bad_run: int = 0) -> None:
        self._bad_run = torch.full((), bad_run, dtype=torch.long, device=self.device)   # current run of skips
        self._bad_longest = self._bad_run.clone()                                        # longest since last read
        self._bad_count = torch.zeros((), dtype=torch.long, device=self.device)          # skips since last read
        self._health_since = self.progress.global_step

    def _record_step(self, stepped: torch.Tensor) -> None:
        bad = (~stepped).long()
        self._bad_run = (self._bad_run + 1) * bad
        self._bad_longest = torch.maximum(self._bad_longest, self._bad_run)
        self._bad_count = self._bad_count + bad

    def _check_health(self) -> None:
        """Read the skip counters (one host read: log and save steps only), log the skipped updates, and stop once
        max_bad_steps optimiser steps in a row were skipped."""
        p, cfg = self.progress, self.cfg
        run, longest, count = torch.stack([self._bad_run, self._bad_longest, self._bad_count]).tolist()
        p.bad_steps = run
        if count:
            self.logger.event(f"steps {self._health_since + 1}-{p.global_step}: non-finite loss, update skipped "
                              f"{count} time(s) (longest run {longest} in a row, limit {cfg.max_bad_steps})",
                              step=p.global_step, stage=p.stage)
        self._bad_longest, self._bad_count = self._bad_run.clone(), torch.zeros_like(self._bad_count)
        self._health_since = p.global_step
        if longest >= cfg.max_bad_steps:
            raise NonFiniteLossError(
                f"stopping: the loss was NaN/inf for {longest} optimiser steps in a row (stage {p.stage}, by step "
                f"{p.global_step}; none of them changed the model). Lower --lr, enable --clip-grad, or use --amp "
                f"bf16 instead of fp16; the last good state is in checkpoints/latest.pt")

    def _after_step(self, stepped: torch.Tensor, lr: float) -> None:
        p, cfg = self.progress, self.cfg
        self._record_step(stepped)
        if p.global_step % cfg.log_every == 0 or self._stop():
            self._check_health()
            self._log_train(lr)
        self.logger.advance(1)
        if cfg.save_every and p.global_step % cfg.save_every == 0:
            self.save(ckpt.LATEST)

    def _log_train(self, lr: float) -> None:
        """All-reduce the mean of each loss term since the last log step (the only host syncs of the loop)."""
        if not self._loss_sums:
            return
        names = sorted(self._loss_sums)
        means = torch.stack([torch.as_tensor(self._loss_sums[n], device=self.device) for n in names])
        means = all_reduce_sum(means) / (self._loss_count * self.info.world_size).clamp(min=1.0)
        p = self.progress
        record = {"kind": "train", "step": p.global_step, "stage": p.stage, "epoch": p.epoch, "lr": lr,
                  "samples_per_s": self._throughput.rate()}
        record.update({f"loss/{n}": v for n, v in zip(names, means.tolist())})
        for name, value in getattr(self, "_last_stats", {}).items():  # rank 0's view of the last micro-batch
            record[f"cgns/{name}"] = value
        if getattr(self, "_grad_norm", None) is not None:
            record["grad_norm"] = self._grad_norm
        self.logger.write(record)
        self.logger.advance(0, loss=record["loss/total"], lr=lr, samples_s=record["samples_per_s"])
        self._loss_sums, self._loss_count = {}, 0
        self._throughput.reset()

    # ---------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> dict:
        """Validation loss per term and retrieval R@1/5/10 on the validation split; leaves every RNG untouched."""
        if self.val_set is None or len(self.val_set) == 0:
            return {}
        saved_rng = rng_state()
        sampler = ResumableSampler(len(self.val_set), rank=self.info.rank, world_size=self.info.world_size,
                                   shuffle=False, pad=True)
        loader = self._loader(self.val_set, sampler, self.cfg.batch_size, drop_last=False)
        self.raw.eval()
        sums, count = {}, torch.zeros((), device=self.device)
        for batch in loader:
            batch = move_to(batch, self.device)
            with self.autocast():
                losses, _ = self.raw(batch, stage=min(self.progress.stage, 2), epoch=self.progress.epoch)
            n = batch["image"].shape[0]
            for name, value in {**losses, "total": total_loss(losses)}.items():
                sums[name] = sums.get(name, 0.0) + value.detach().float() * n
            count += n
        names = sorted(sums)
        values = all_reduce_sum(torch.stack([torch.as_tensor(sums[n], device=self.device) for n in names]))
        values = values / all_reduce_sum(count)
        metrics = {f"val/loss/{n}": v for n, v in zip(names, values.tolist())}
        retrieval = evaluate_retrieval(self.raw, loader, self.device, self.autocast)
        metrics.update({f"retrieval/{k}": v for k, v in retrieval.items()})
        chance = chance_recall(retrieval.get("num_pairs", 0))
        metrics.update({f"retrieval/chance_{k}": v for k, v in chance.items()})
        self.raw.train()
        set_rng_state(saved_rng)
        p = self.progress
        self.logger.write({"kind": "val", "step": p.global_step, "stage": min(p.stage, 2), "epoch": p.epoch,
                           **metrics})
        if self.info.is_main:
            summary = " ".join(f"{k.split('/')[-1]}={v:.3f}" for k, v in metrics.items()
                               if k in ("val/loss/total", "retrieval/i2t_R@1", "retrieval/t2i_R@1",
                                        "retrieval/i2t_R@10"))
            self.logger.event(f"validation stage {min(p.stage, 2)} epoch {p.epoch}: {summary}", step=p.global_step,
                              stage=min(p.stage, 2))
        return metrics


def prepare_for_device(model: torch.nn.Module, device: torch.device, compile_towers: bool = False):
    """The GPU settings of the model, in place: a ResNet image tower in channels-last layout (cuDNN's fast path)
    and, with compile_towers, both encoders compiled with torch.compile (Module.compile keeps the state-dict names,
    so checkpoints are unchanged)."""
    towers = [getattr(model, name) for name in ("image_encoder", "text_encoder") if hasattr(model, name)]
    if device.type == "cuda" and towers and getattr(towers[0], "name", "") == "resnet50":
        towers[0].to(memory_format=torch.channels_last)
    if compile_towers:
        for tower in towers:
            tower.compile()
    return model


@torch.no_grad()
def guarded_step(optimizer: torch.optim.Optimizer, bad: torch.Tensor, buffers: dict | None = None) -> None:
    """optimizer.step(), undone on the device where bad (a 0-d bool) is True: parameters and every state tensor
    (moments, step counts; zeros for state the step created) are put back with torch.where. For optimisers without
    a fused found_inf skip (the CPU Adam); a good step's values are exactly those of a plain step. buffers: a dict
    kept by the caller, so the copies are not reallocated every step."""
    buffers = {} if buffers is None else buffers
    kept, fresh = [], []
    for group in optimizer.param_groups:
        for param in group["params"]:
            if param.grad is None:
                continue
            state = optimizer.state.get(param)
            if state:
                kept += [param, *(v for v in state.values() if isinstance(v, torch.Tensor))]
            else:
                fresh.append(param)
                kept.append(param)
    saved = []
    for t in kept:  # keyed by identity AND layout: a tensor that took a freed one's id never gets its stale copy
        key = (id(t), t.shape, t.dtype, t.device)
        if key not in buffers:  # (setdefault would build the empty tensor every step, used or not)
            buffers[key] = torch.empty_like(t)
        saved.append(buffers[key])
    torch._foreach_copy_(saved, kept)
    optimizer.step()
    for now, before in zip(kept, saved):
        torch.where(bad.to(now.device), before, now, out=now)
    for param in fresh:  # state this step created: as if never stepped
        for now in optimizer.state[param].values():
            if isinstance(now, torch.Tensor):
                torch.where(bad.to(now.device), now.new_zeros(()), now, out=now)
