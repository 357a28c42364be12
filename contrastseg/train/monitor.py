"""What a run shows and keeps: TensorBoard scalars and images, scalars.jsonl, a log file, a bar.

Only the main process (rank 0) writes; on other ranks every method is a no-op.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

LOGGER_NAME = "contrastseg"


def get_logger() -> logging.Logger:
    """The package logger (messages go to the run's ``train.log`` and to stderr)."""
    return logging.getLogger(LOGGER_NAME)


def _truncate_records(path: Path, last_step: int, rerun_prefixes: tuple[str, ...]) -> None:
    """Keep the records of ``path`` (JSON lines) whose step is at most ``last_step``.

    Records with a key starting with one of ``rerun_prefixes`` are dropped whatever their
    step (the run logs them again at its end). A line that does not parse is the torn last
    write of a killed run and is dropped too. The file is replaced atomically, so a crash
    here loses nothing.
    """
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict) or record.get("step", 0) > last_step:
            continue
        if not any(key.startswith(rerun_prefixes) for key in record):
            kept.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, path)


#: Each ``train.log`` line carries the step it was logged at, so a resume can cut the log.
_LOG_FORMAT = "%(asctime)s %(levelname)s [step %(step)s] %(message)s"
_LOG_STEP = re.compile(r"^\S+ \S+ [A-Z]+ \[step (\d+)\] ")


def _truncate_log(path: Path, last_step: int) -> None:
    """Drop the ``train.log`` lines logged after ``last_step`` (and their continuation lines).

    Lines without a step (files of older versions, continuation lines of a multi-line
    message before any stepped line) are kept. Replaced atomically, like the records.
    """
    if not path.is_file():
        return
    kept, keep = [], True
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        match = _LOG_STEP.match(line)
        if match:
            keep = int(match.group(1)) <= last_step
        if keep:
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, path)


class RunMonitor:
    """TensorBoard writer + log file + tqdm bar for one run.

    Args:
        run_dir: the run folder (event files, ``train.log``).
        enabled: False on ranks other than 0.
        total_steps: length of the progress bar.
        initial_step: the step the run starts from (its checkpoint's, on resume). What an
            earlier, interrupted run logged after it is dropped: TensorBoard hides those
            events (``purge_step``), ``scalars.jsonl`` keeps only the records up to it and
            ``train.log`` the lines logged up to it, so a resumed run logs every step once.
        progress: show the tqdm bar.
        rerun_prefixes: tags of records logged once at the end of a run (fine-tuning's
            ``test/``): a restarted run logs them again, so their old records are dropped.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        enabled: bool,
        total_steps: int,
        initial_step: int = 0,
        progress: bool = True,
        rerun_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.enabled = enabled
        self.step = initial_step  #: the newest step logged (stamped on train.log lines)
        self.run_dir = Path(run_dir)
        self.writer = None
        self.bar = None
        self._handler: logging.Handler | None = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=initial_step + 1)
        _truncate_records(self.run_dir / "scalars.jsonl", initial_step, rerun_prefixes)
        _truncate_log(self.run_dir / "train.log", initial_step)
        logger = get_logger()
        logger.setLevel(logging.INFO)
        self._handler = logging.FileHandler(self.run_dir / "train.log", encoding="utf-8")
        self._handler.setFormatter(logging.Formatter(_LOG_FORMAT))
        self._handler.addFilter(self._stamp)
        logger.addHandler(self._handler)
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True, leave=True
            )

    def _stamp(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "step"):
            record.step = self.step
        return True

    def info(self, message: str) -> None:
        """A line in ``train.log`` and on the terminal (above the bar)."""
        if not self.enabled:
            return
        get_logger().info(message)
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def scalars(self, step: int, values: Mapping[str, float]) -> dict[str, float]:
        """Log ``values`` at ``step`` to TensorBoard and ``scalars.jsonl``; returns the record."""
        record = {"step": step, **values}
        self.step = max(self.step, step)
        if self.writer is None:
            return record
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        with open(self.run_dir / "scalars.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        return record

    def image(self, step: int, tag: str, png_path: str | os.PathLike[str]) -> None:
        """Log a PNG written on disk (e.g. by :func:`contrastseg.augment.draw_view_grid`)."""
        if self.writer is None:
            return
        from PIL import Image

        with Image.open(png_path) as img:
            array = np.asarray(img.convert("RGB"))
        self.writer.add_image(tag, array, step, dataformats="HWC")

    def advance(self, steps: int, postfix: Mapping[str, str] | None = None) -> None:
        if self.bar is None:
            return
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(steps)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
        if self._handler is not None:
            get_logger().removeHandler(self._handler)
            self._handler.close()
