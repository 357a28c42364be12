"""The run skeleton shared by pretraining and fine-tuning.

Both engines run the same frame around their own model, data and task:

1. the run folder ``<run.root>/<run.name or a timestamped default>``, locked for this process,
   and the checkpoint to resume from (``run.resume``: never / auto / a file), checked before
   anything is written (:func:`~contrastseg.train.checkpoint.resume_source`);
2. the resolved config as ``config.yaml`` (rank 0);
3. resuming: the checkpoint read, the settings that changed since it was written noted, the
   step taken over; the engine puts the weights back (it knows what they are);
4. the monitor (``train.log``, ``scalars.jsonl``, TensorBoard, the progress bar) and the
   :class:`~contrastseg.train.loop.TrainingLoop` with the optimizer, schedule, scaler and
   random state restored;
5. the start line (with what was resumed and the notes);
6. the close: the monitor and the folder's lock, also when the run fails.

:class:`TrainingRun` is that frame; an engine uses it as a context manager::

    with TrainingRun(config, "simclr-resnet50-20250101-120000") as run:
        ... build the task and its TrainState in run.run_dir ...
        payload = run.resume(load_checkpoint)  # None for a fresh run
        ... put payload's weights into the model ...
        loop = run.start(state, run.loop_settings(total_steps, batch_size), forward)
        run.announce("contrastseg 0.1.0 pretrain: ...")
        result = loop.run(task, loader)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from contrastseg.train.checkpoint import (
    changed_settings,
    release_run_folders,
    resume_note,
    resume_source,
)
from contrastseg.train.loop import LoopSettings, TrainingLoop, TrainState
from contrastseg.train.monitor import RunMonitor
from contrastseg.train.runtime import threads_line
from contrastseg.utils.configtools import to_dict


class TrainingRun:
    """One engine run in its run folder: lock, resume source, config.yaml, monitor, loop, close.

    Args:
        config: the engine's config; its ``run`` section gives ``root``, ``name``, ``resume``,
            ``log_every``, ``checkpoint_every``, ``keep_last`` and ``progress``, and its
            ``optim.grad_clip`` the clipping.
        default_name: the folder name without ``run.name`` (a timestamped one).
        main: this process writes the folder (rank 0).

    Attributes:
        run_dir: the run folder.
        checkpoint_dir: its ``checkpoints`` folder.
        resume_from: the checkpoint the run continues from, or None.
        payload: that checkpoint's content once :meth:`resume` read it.
        notes: lines the start line is followed by (settings changed since the checkpoint,
            what the engine adds).
        monitor: the run's monitor, from :meth:`start` on.

    Raises:
        RunFolderLocked / ConfigError: see :func:`~contrastseg.train.checkpoint.resume_source`.
    """

    def __init__(self, config: Any, default_name: str, main: bool = True) -> None:
        self.config, self.main = config, main
        self.run_dir = Path(config.run.root) / (config.run.name or default_name)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.payload: dict[str, Any] | None = None
        self.notes: list[str] = []
        self.threads = threads_line(config.train.num_threads)  # set by the engine, first
        self.monitor: RunMonitor | None = None
        self.resume_from = resume_source(
            config.run.resume, bool(config.run.name), self.checkpoint_dir
        )
        try:
            if main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                resolved = yaml.safe_dump(to_dict(config), sort_keys=False)
                (self.run_dir / "config.yaml").write_text(resolved)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> TrainingRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def resume(self, load: Callable[[Path], dict[str, Any]]) -> dict[str, Any] | None:
        """Read the checkpoint to resume from with ``load`` (None for a fresh run).

        The settings whose change makes the resumed run another run (batch size, patch size)
        become notes under the start line.
        """
        if self.resume_from is None:
            return None
        self.payload = load(self.resume_from)
        self.notes += changed_settings(self.payload.get("config", {}), to_dict(self.config))
        return self.payload

    def loop_settings(
        self, total_steps: int, images_per_step: int, world_size: int = 1, rank: int = 0
    ) -> LoopSettings:
        """The loop's lengths and cadences from the config's ``run`` and ``optim`` sections."""
        run = self.config.run
        return LoopSettings(
            total_steps, run.log_every, run.checkpoint_every, run.keep_last, self.checkpoint_dir,
            self.config.optim.grad_clip, images_per_step, world_size, rank,
        )  # fmt: skip

    def start(
        self,
        state: TrainState,
        settings: LoopSettings,
        forward: nn.Module | None = None,
        rerun_prefixes: tuple[str, ...] = (),
    ) -> TrainingLoop:
        """The monitor and the loop, with the training state of the resumed checkpoint.

        Args:
            state: the state the loop trains (the engine has loaded the weights into its model).
            settings: see :meth:`loop_settings`.
            forward: the module the task's step calls (a DDP / compile wrapper).
            rerun_prefixes: scalar names a resumed run logs again (e.g. ``test/``).
        """
        if self.payload is not None:
            state.step = int(self.payload["step"])
        if state.step >= settings.total_steps and self.main:
            print(f"{self.run_dir}: already at step {state.step} of {settings.total_steps}; "
                  "nothing to do")  # fmt: skip
        self.monitor = RunMonitor(
            self.run_dir, self.main, settings.total_steps, state.step, self.config.run.progress,
            rerun_prefixes,
        )  # fmt: skip
        loop = TrainingLoop(state, settings, self.monitor, forward)
        if self.payload is not None:
            loop.restore(self.payload, self.resume_from)
        return loop

    def announce(self, headline: str) -> None:
        """Log the start line (``headline`` and what was resumed), then the notes."""
        step = int(self.payload["step"]) if self.payload is not None else 0
        self.monitor.info(headline + resume_note(self.config.run.resume, self.resume_from, step))
        self.monitor.info(self.threads)
        for note in self.notes:
            self.monitor.info(note)

    def close(self) -> None:
        """Close the monitor and release the run folder's lock (safe to call twice)."""
        monitor, self.monitor = self.monitor, None
        try:
            if monitor is not None:
                monitor.close()
        finally:
            release_run_folders()
