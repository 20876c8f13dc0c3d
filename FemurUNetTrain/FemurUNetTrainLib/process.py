"""Training as a background process (``python -m FemurUNetTrainLib.cli train ...``), polled from a GUI timer.

Pure Python (subprocess, no Qt, no torch): a crash of the training cannot take the caller down, and the
caller stays responsive because nothing here blocks. Output goes to a file (no pipe to fill up); the epoch
log is the training's own ``<out stem>.log.jsonl``.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .history import log_path, read_log_records
from .options import TrainConfig, train_arguments

LIB_PACKAGES = ("FemurUNetLib", "FemurUNetTrainLib")
WINDOWS = os.name == "nt"


def train_command(config: TrainConfig, python: Optional[str] = None) -> list:
    """The argument list that runs ``femurunet train`` for ``config`` with this Python (Slicer's, inside Slicer),
    reporting progress as JSON lines."""
    return arguments_command(train_arguments(config), python)


def arguments_command(arguments: list, python: Optional[str] = None) -> list:
    """The argument list that runs ``femurunet train ARGUMENTS`` with this Python, progress as JSON lines."""
    return [python or sys.executable, "-m", "FemurUNetTrainLib.cli", "train", *arguments, "--progress", "json"]


def library_environment(base: Optional[dict] = None) -> dict:
    """``base`` (default: this process's environment) with the folders holding the Lib packages put first on
    PYTHONPATH (inside Slicer they are only on the running interpreter's sys.path) and unbuffered output."""
    env = dict(os.environ if base is None else base)
    folders = []
    for name in LIB_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"cannot find the {name} package")
        folder = str(Path(list(spec.submodule_search_locations)[0]).parent)
        if folder not in folders:
            folders.append(folder)
    old = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(folders + [p for p in old if p not in folders])
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class StepProgress:
    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float

    @property
    def fraction(self) -> float:
        return ((self.epoch - 1) * self.steps + self.step) / max(self.epochs * self.steps, 1)

    def describe(self) -> str:
        return f"epoch {self.epoch}/{self.epochs}, step {self.step}/{self.steps}, loss {self.loss:.4f}"


def split_progress(text: str) -> tuple:
    """(last StepProgress or None, the other lines) of output from ``femurunet train --progress json``: step
    lines become the progress, epoch lines are dropped (the epoch log has them), anything else is kept."""
    last, others = None, []
    for line in text.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            item = None
        if not isinstance(item, dict):
            if line.strip():
                others.append(line.rstrip())
        elif "step" in item:
            last = StepProgress(*(item[k] for k in ("epoch", "epochs", "step", "steps", "loss")))
    return last, others


def last_line(text: str) -> str:
    """The last non-empty line of output, without terminal control sequences."""
    lines = [l.strip() for l in re.split(r"[\r\n]", text) if l.strip()]
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", lines[-1]) if lines else ""


class BackgroundProcess:
    """A child process whose stdout+stderr go to a file; ``poll()`` it from a timer, ``stop()`` it any time."""

    def __init__(self, command: list, env: Optional[dict] = None, cwd: Optional[str] = None,
                 output_path: Optional[str] = None):
        self.command, self.env, self.cwd = list(command), env, cwd
        self.output_path = Path(output_path) if output_path else None
        self._own_output = output_path is None
        self.process: Optional[subprocess.Popen] = None
        self._output_file = None
        self._read_offset = 0
        self.returncode: Optional[int] = None
        self.stopped = False

    def start(self) -> "BackgroundProcess":
        if self.process is not None:
            raise RuntimeError("process already started")
        if self.output_path is None:
            fd, name = tempfile.mkstemp(prefix="femurunet-process-", suffix=".log")
            os.close(fd)
            self.output_path = Path(name)
        self._output_file = open(self.output_path, "wb")
        kwargs = {}
        if WINDOWS:
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True   # its own process group: stop() reaches its children too
            if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:   # e.g. Slicer started as a shell's background job
                kwargs["preexec_fn"] = _interrupt_by_default
        try:
            self.process = subprocess.Popen(self.command, stdout=self._output_file, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.env, cwd=self.cwd, **kwargs)
        except OSError:
            self.close()
            raise
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.poll() is None

    def poll(self) -> Optional[int]:
        """The exit code once finished, else None (never blocks)."""
        if self.process is None:
            return None
        if self.returncode is None:
            self.returncode = self.process.poll()
            if self.returncode is not None and self._output_file is not None:
                self._output_file.close()
                self._output_file = None
        return self.returncode

    def read_output(self) -> str:
        """Output written since the last call."""
        if self.output_path is None or not self.output_path.exists():
            return ""
        with open(self.output_path, "rb") as f:
            f.seek(self._read_offset)
            data = f.read()
        self._read_offset += len(data)
        return data.decode("utf-8", errors="replace")

    def output_tail(self, chars: int = 4000) -> str:
        if self.output_path is None or not self.output_path.exists():
            return ""
        with open(self.output_path, "rb") as f:
            f.seek(max(0, self.output_path.stat().st_size - chars))
            return f.read().decode("utf-8", errors="replace")

    def _signal(self, how: str) -> None:
        """Send the interrupt, terminate or kill request; raises OSError when it cannot be sent."""
        if WINDOWS:
            if how == "interrupt":
                self.process.send_signal(signal.CTRL_BREAK_EVENT)
            elif how == "terminate":
                self.process.terminate()
            else:
                self.process.kill()
            return
        sig = {"interrupt": signal.SIGINT, "terminate": signal.SIGTERM, "kill": signal.SIGKILL}[how]
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, grace_seconds: float = 5.0) -> Optional[int]:
        """Interrupt (like Ctrl+C), then terminate, then kill, each after ``grace_seconds``; returns the exit code.

        A request that cannot be sent is followed by the next one at once: on Windows a child started without a
        console (CREATE_NO_WINDOW) cannot get Ctrl+Break, and ``send_signal`` raises OSError. The training writes
        its checkpoint atomically, so a terminated or killed run still resumes from its last finished epoch.
        """
        if self.process is None or self.poll() is not None:
            return self.returncode
        self.stopped = True
        for how in ("interrupt", "terminate", "kill"):
            try:
                self._signal(how)
            except OSError:
                if self.poll() is not None:
                    return self.returncode
                continue
            deadline = time.monotonic() + grace_seconds
            while time.monotonic() < deadline:
                if self.poll() is not None:
                    return self.returncode
                time.sleep(0.02)
        try:
            self.process.wait(timeout=max(grace_seconds, 5.0))
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"could not stop process {self.process.pid}") from None
        return self.poll()

    def close(self) -> None:
        """Stop if still running, close the output file, delete it if this object made it."""
        if self.process is not None and self.poll() is None:
            self.stop()
        if self._output_file is not None:
            self._output_file.close()
            self._output_file = None
        if self._own_output and self.output_path is not None:
            self.output_path.unlink(missing_ok=True)


@dataclass
class TrainingStatus:
    returncode: Optional[int]       # None while running
    records: list                   # every epoch record so far
    new_records: list               # records that appeared since the previous poll
    output: str                     # output text since the previous poll

    @property
    def finished(self) -> bool:
        return self.returncode is not None


class TrainingRun:
    """``femurunet train`` in the background: ``start()``, then ``poll()`` from a timer, ``stop()`` to end it.

    A stopped run keeps its last checkpoint: start again with ``resume=True`` to continue.
    """

    def __init__(self, config: TrainConfig, python: Optional[str] = None, env: Optional[dict] = None,
                 arguments: Optional[list] = None):
        """``arguments``: run ``femurunet train ARGUMENTS`` (e.g. with ``--recipe``) instead of ``config``'s own;
        ``config`` then names the output (``out``) and whether the run resumes."""
        self.config = config
        self.log_path = log_path(config.out)
        command = train_command(config, python) if arguments is None else arguments_command(arguments, python)
        self.process = BackgroundProcess(command, env=library_environment(env))
        self.records: list = []
        self._log_state = None

    def start(self) -> "TrainingRun":
        if not self.config.resume:
            self.log_path.unlink(missing_ok=True)   # a fresh run must not show the old curve
        self.process.start()
        return self

    def poll(self) -> TrainingStatus:
        returncode = self.process.poll()
        new = []
        state = _file_state(self.log_path)
        if state != self._log_state:
            self._log_state = state
            records = read_log_records(self.log_path)
            known = len(self.records)
            new = records[known:] if records[:known] == self.records else records
            self.records = records
        return TrainingStatus(returncode, list(self.records), new, self.process.read_output())

    def stop(self, grace_seconds: float = 5.0) -> Optional[int]:
        return self.process.stop(grace_seconds)

    @property
    def running(self) -> bool:
        return self.process.running

    @property
    def succeeded(self) -> bool:
        return self.process.poll() == 0 and not self.process.stopped and Path(self.config.out).is_file()

    def close(self) -> None:
        self.process.close()


def _interrupt_by_default() -> None:
    """In the child before exec: an inherited 'ignore Ctrl+C' would make stop()'s interrupt do nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _file_state(path: Path):
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, getattr(st, "st_ino", 0))
