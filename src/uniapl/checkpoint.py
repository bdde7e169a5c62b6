"""Checkpoints of a training run, single process or DeepSpeed: written atomically, read back to resume.

Layout of a checkpoint directory (``<run>/checkpoint``):
  ``model.safetensors``         the policy's full weights (DeepSpeed: gathered, written by rank 0)
  ``trainer_state.pt``          single process: step, optimizer, scheduler, torch and Python RNG states
  ``trainer_state_rank<k>.pt``  DeepSpeed: rank k's step, scheduler and RNG states (no optimizer: see ``ds/``)
  ``ds/ckpt/``                  DeepSpeed's own checkpoint (the partitioned optimizer states)
  ``disc.safetensors``, ``disc_opt.pt``  the co-trained discriminator and its optimizer (GAIL ablation only)

A single-process checkpoint is built in a temporary sibling and renamed into place (``io.atomic_path``);
a DeepSpeed one likewise, every rank writing its part and rank 0 renaming. A SIGKILL at any point leaves
the previous checkpoint whole.
"""

from __future__ import annotations

import os
import random
import shutil
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from uniapl.io import atomic_path


def save_safetensors(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """``state_dict`` as a safetensors file. Each tensor is cloned first: tied weights (e.g. the
    embeddings and the LM head) share memory, which safetensors refuses."""
    save_file({k: v.detach().clone().contiguous() for k, v in state_dict.items()}, str(path))


def trainer_state(step: int, scheduler, optimizer=None) -> dict:
    """What a resumed run needs besides the weights: step, optimizer (None: DeepSpeed keeps it in ``ds/``),
    LR scheduler and the torch and Python RNG states (taken now)."""
    opt = {} if optimizer is None else {"optimizer": optimizer.state_dict()}
    return {"step": step, **opt, "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate()}


def restore_trainer_state(state: dict, scheduler) -> int:
    """Load the scheduler and RNG states of a :func:`trainer_state` dict (not its optimizer); returns its step."""
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    return state["step"]


def _save_disc(tmp: Path, disc, disc_opt) -> None:
    save_safetensors(disc.state_dict(), tmp / "disc.safetensors")
    torch.save(disc_opt.state_dict(), tmp / "disc_opt.pt")


def _load_disc(path: Path, disc, disc_opt) -> None:
    if disc_opt is not None and (path / "disc.safetensors").exists():
        disc.load_state_dict(load_file(str(path / "disc.safetensors")))
        disc_opt.load_state_dict(torch.load(path / "disc_opt.pt", weights_only=True))


def save(path: Path, policy, optimizer, scheduler, step: int, disc=None, disc_opt=None) -> None:
    """Single process: weights, :func:`trainer_state` and (``disc_opt`` given) the co-trained discriminator."""
    with atomic_path(path) as tmp:
        tmp.mkdir()
        save_safetensors(policy.state_dict(), tmp / "model.safetensors")
        torch.save(trainer_state(step, scheduler, optimizer), tmp / "trainer_state.pt")
        if disc_opt is not None:
            _save_disc(tmp, disc, disc_opt)


def load(path: Path, policy, optimizer, scheduler, disc=None, disc_opt=None) -> int:
    """Restore what :func:`save` wrote (the RNG states included); returns the step to resume at."""
    policy.load_state_dict(load_file(str(path / "model.safetensors")), strict=False)
    st = torch.load(path / "trainer_state.pt", weights_only=True)
    optimizer.load_state_dict(st["optimizer"])
    step = restore_trainer_state(st, scheduler)
    _load_disc(path, disc, disc_opt)
    return step


def save_deepspeed(path: Path, engine, full_policy: AbstractContextManager, rank: int, scheduler, step: int,
                   disc=None, disc_opt=None) -> None:
    """DeepSpeed: every rank calls this (collective). ``full_policy``: a context manager yielding the policy
    with full parameters (ZeRO-3: gathered; ``Trainer.gathered_policy``). ``ds/`` holds DeepSpeed's
    checkpoint, ``model.safetensors`` the gathered weights (rank 0), ``trainer_state_rank<k>.pt`` each
    rank's state. Written to a sibling directory, renamed by rank 0."""
    tmp = path.parent / f".{path.name}.ds-tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    torch.distributed.barrier()
    engine.save_checkpoint(str(tmp / "ds"), tag="ckpt")
    with full_policy as pol:
        if rank == 0:
            save_safetensors(pol.state_dict(), tmp / "model.safetensors")
    torch.save(trainer_state(step, scheduler), tmp / f"trainer_state_rank{rank}.pt")
    if disc_opt is not None and rank == 0:
        _save_disc(tmp, disc, disc_opt)
    torch.distributed.barrier()
    if rank == 0:
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    torch.distributed.barrier()


def load_deepspeed(path: Path, engine, rank: int, scheduler, disc=None, disc_opt=None) -> int:
    """Restore what :func:`save_deepspeed` wrote; a rank with no state file of its own (a checkpoint from
    fewer ranks) takes rank 0's. Returns the step to resume at."""
    engine.load_checkpoint(str(path / "ds"), tag="ckpt", load_optimizer_states=True, load_lr_scheduler_states=False)
    f = path / f"trainer_state_rank{rank}.pt"
    st = torch.load(f if f.exists() else path / "trainer_state_rank0.pt", weights_only=True)
    step = restore_trainer_state(st, scheduler)
    _load_disc(path, disc, disc_opt)
    return step
