"""Training that survives preemption: its full state saved every N steps and when a signal stops it, resumed next attempt.

A cluster stops a job with SIGTERM (SLURM at its time limit or to preempt it)
and may requeue it; the next attempt of the same run continues each training
phase from its last saved state instead of from zero, and ends with the same
weights as a run never stopped (same seed, same steps): the state holds the
model, optimizer, scheduler, loop position, the random number generators and
the place in the shuffled data.

A signal during training waits for the end of the current step (a second one
stops at once, saving nothing), so the saved state is never half a step.
States are Lightning checkpoints of tensors and plain values, loaded with
``weights_only=True``; each is written to a temporary file and renamed, so a
kill mid-write leaves the previous one whole.
"""

from __future__ import annotations

import logging
import random
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader

from trimlab.config import ConfigError
from trimlab.files import atomic_path
from trimlab.interrupt import HANDLED

log = logging.getLogger(__name__)


class ResumableLoader(DataLoader):
    """A training loader that can continue an epoch where a saved state left it.

    Its state (Lightning saves it with the loop's) is the generators' states at
    the start of the current epoch (the loader's, for worker seeds, and the
    sampler's shuffling) and the batches given out since; restored, the next
    epoch starts from those states and passes over those batches. Give it a
    ``generator``: then iterating never draws from the global generator, whose
    stream (dropout) then depends only on the steps taken.
    """

    _epoch_start: list[torch.Tensor] | None = None
    _given = 0
    _resume: dict[str, Any] | None = None

    def _generators(self) -> list[torch.Generator]:
        found = [self.generator, getattr(self.sampler, "generator", None)]
        return [g for g in found if isinstance(g, torch.Generator)]

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        skip = 0
        if self._resume is not None:
            for generator, state in zip(self._generators(), self._resume["generators"]):
                generator.set_state(state)
            skip, self._resume = int(self._resume["batches"]), None
        self._epoch_start = [g.get_state() for g in self._generators()]
        self._given = 0
        for batch in super().__iter__():
            self._given += 1
            if self._given > skip:
                yield batch

    def end_epoch(self) -> None:
        """The epoch is over (its last batch may come before the data's end): a state saved now starts the next one."""
        self._epoch_start = [g.get_state() for g in self._generators()]
        self._given = 0

    def state_dict(self) -> dict[str, Any]:
        start = self._epoch_start if self._epoch_start is not None else [g.get_state() for g in self._generators()]
        return {"generators": start, "batches": self._given}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = state


def _rng_states() -> dict[str, Any]:
    numpy = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [numpy[0], torch.from_numpy(numpy[1].astype(np.int64)), *numpy[2:]],
        "python": random.getstate(),
    }


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(states["python"])


class ResumableTraining(pl.Callback):
    """Saves the training state to ``path`` every ``every_n_steps`` optimizer steps (0: never), when a signal stops
    the training (at the end of that step) and, with ``keep_final``, when the training ends; restores the random
    generators of a state it is resumed from.

    Under DDP a signal stops at once, as without this callback: the processes would not agree on the step to save.
    """

    def __init__(self, path: Path, every_n_steps: int, keep_final: bool) -> None:
        self.path = path
        self.every_n_steps = every_n_steps
        self.keep_final = keep_final
        self._rng: dict[str, Any] | None = None
        self._signal: int | None = None
        self._previous: dict[int, Any] = {}
        self._saved_step = -1
        self._seen_step = -1

    def state_dict(self) -> dict[str, Any]:
        return {"rng": _rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        _set_rng_states(state_dict["rng"])  # a finished phase is not run again: its generators are the run's from here
        self._rng = state_dict["rng"]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._rng is not None:  # again: setting up the fit (a sanity check, loaders) may have drawn from them
            _set_rng_states(self._rng)
            self._rng = None
        self._saved_step = self._seen_step = trainer.global_step
        if trainer.world_size == 1 and threading.current_thread() is threading.main_thread():
            for signum in HANDLED:
                previous = signal.getsignal(signum)
                if callable(previous):  # someone handles it (the run turns it into RunInterrupted): defer it to the step's end
                    self._previous[signum] = previous
                    signal.signal(signum, self._defer)

    def _defer(self, signum: int, frame: Any) -> None:
        if self._signal is not None:  # a second signal: stop now
            previous = self._previous_handler(signum)
            self._restore_handlers()
            previous(signum, frame)
            return
        self._signal = signum
        log.warning("%s received: saving the training state at the end of this step, then stopping", signal.Signals(signum).name)

    def _previous_handler(self, signum: int) -> Any:
        return self._previous.get(signum, signal.getsignal(signum))

    def _restore_handlers(self) -> None:
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._defer:
                signal.signal(signum, previous)
        self._previous = {}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        stepped, self._seen_step = trainer.global_step != self._seen_step, trainer.global_step
        if stepped and batch_idx + 1 < trainer.num_training_batches:  # not inside an accumulation of gradients, nor
            self._save_if_due(trainer)  # the epoch's last batch (saved after its validation)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = trainer.train_dataloader
        if isinstance(loader, ResumableLoader):
            loader.end_epoch()
        if trainer.global_step != self._saved_step:
            self._save_if_due(trainer)

    def _save_if_due(self, trainer: pl.Trainer) -> None:
        due = self.every_n_steps > 0 and trainer.global_step // self.every_n_steps > self._saved_step // self.every_n_steps
        if due or self._signal is not None:
            self._save(trainer)
        if self._signal is not None:
            signum, self._signal = self._signal, None
            log.warning("training state at step %d saved in %s; run the same command again to resume", trainer.global_step, self.path)
            previous = self._previous_handler(signum)
            self._restore_handlers()
            previous(signum, None)  # the handler that was deferred: the run records the interruption and stops

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.keep_final and trainer.global_step != self._saved_step:
            self._save(trainer)
        pending, self._signal = self._signal, None
        previous = self._previous_handler(pending) if pending is not None else None
        self._restore_handlers()
        if previous is not None:  # it came after the last step: the phase is complete, the run stops now
            previous(pending, None)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore_handlers()

    def _save(self, trainer: pl.Trainer) -> None:
        if trainer.is_global_zero:
            with atomic_path(self.path) as tmp:  # the whole state (optimizer, loops): a resume needs it; said, so Lightning does not log its default
                trainer.save_checkpoint(tmp, weights_only=False)
        else:
            trainer.save_checkpoint(self.path, weights_only=False)  # only its part of the collective save: rank 0 writes
        self._saved_step = trainer.global_step


def saved_step(path: Path) -> int:
    """The optimizer steps a saved training state has taken; a state that cannot be read is a :class:`ConfigError`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(state["global_step"])
    except Exception as err:  # noqa: BLE001 — unpickling and truncation need the same fix
        raise ConfigError(f"saved training state {path} cannot be read ({type(err).__name__}: {err}); delete it to start that training over") from err


def discard(folder: Path) -> None:
    """Remove saved training states once what they led to is kept elsewhere (a cache entry, a completed run)."""
    shutil.rmtree(folder, ignore_errors=True)
