"""TensorBoard runs by the thousand: one writer thread for every run's event file, one YAML dump
per run's ``hparams.yaml``.

A population logs one TensorBoard run per member, each with Lightning's ``TensorBoardLogger``.
Each such logger's ``SummaryWriter`` starts a thread of its own (1,024 threads for 1,024
members), and each scalar goes through Lightning's and torch's per-call checks, a lock and a
queue: on a 2-core machine about 3.5 ms per member and epoch, more than the population's own
training step at K=1024 (``perf/bench_throughput.py``). Closing each run then writes its
``hparams.yaml`` with Lightning's ``save_hparams_to_yaml``, which dumps every value once to test
it and then the whole (7.7 ms per run in pure-Python YAML).

``MemberTensorBoardLogger`` is ``TensorBoardLogger`` with the same arguments, folders and files,
for the runs this project makes (a population's members, tuning trials, final runs): its event
files are written by the process's one ``EventFileService`` thread, the scalars of one
``log_metrics`` call handed over at once; its ``hparams.yaml`` is dumped once with libyaml's
emitter where every value is a plain scalar (the same text, ``tests/test_event_files.py``).
What a reader sees is unchanged: the same event file names, one event per scalar with its tag,
step and value (``float32``, as ``add_scalar`` writes), the same HPARAMS summaries (through the
``SummaryWriter`` interface, unchanged), the same ``hparams.yaml``. Anything else (a dict of
scalars, a remote ``save_dir``, ``logger.experiment.add_histogram``) takes Lightning's and
torch's own path.

A write that fails on the thread (a full disk) is raised by the next ``flush`` or ``close``
of that run's writer, which Lightning calls when the fit ends: never lost silently.
"""

from __future__ import annotations

import atexit
import os
import queue
import socket
import struct
import threading
import time
from collections import OrderedDict
from typing import Any

import yaml
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from tensorboard.compat.proto.event_pb2 import Event, SourceMetadata
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
from tensorboard.summary.writer import event_file_writer
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.writer import FileWriter
from typing_extensions import override

#: Event files kept open at once; the least recently written are closed and reopened to append.
MAX_OPEN_FILES = 256
_PLAIN = (str, int, float, bool, type(None))


def _record(data: bytes) -> bytes:
    """One TFRecord, as ``tensorboard``'s ``RecordWriter.write`` frames it."""
    header = struct.pack("<Q", len(data))
    return (header + struct.pack("<I", masked_crc32c(header)) + data
            + struct.pack("<I", masked_crc32c(data)))  # fmt: skip


class EventFileService:
    """One thread that writes the events of every ``SharedEventFile`` of the process."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._open: OrderedDict[SharedEventFile, Any] = OrderedDict()
        self._seq = 0  # items submitted so far
        #: The sequence number of the last sync of every file: all before it is on disk.
        self.synced_all = 0

    def submit(self, item: tuple) -> int:
        """Queue ``item``; its sequence number (items are written in this order)."""
        if self._pid != os.getpid():  # a forked child: the parent's thread (and perhaps
            self.__init__()  # type: ignore[misc]  # its lock, held at the fork) is not here
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="lightning_opt event files", daemon=True
                )
                self._thread.start()
            self._seq += 1
            self._queue.put((*item, self._seq))
            return self._seq

    def wait(self, file: SharedEventFile | None = None, close: bool = False) -> int:
        """Return once everything submitted so far is written and flushed (``file``: closed
        too); the sequence number of that sync."""
        if self._thread is None and self._pid == os.getpid():
            return 0  # nothing was ever submitted in this process
        done = threading.Event()
        seq = self.submit(("sync", file, close, done))
        done.wait()
        return seq

    def _handle(self, file: SharedEventFile) -> Any:
        handle = self._open.get(file)
        if handle is not None:
            self._open.move_to_end(file)
            return handle
        if len(self._open) >= MAX_OPEN_FILES:
            _, oldest = self._open.popitem(last=False)
            oldest.close()
        handle = open(file.path, "ab")  # noqa: SIM115 - kept open across writes
        self._open[file] = handle
        return handle

    def _run(self) -> None:
        dirty: set[SharedEventFile] = set()
        while True:
            item = self._queue.get()
            kind, file = item[0], item[1]
            try:
                if kind == "events":
                    self._handle(file).write(b"".join(_record(e) for e in item[2]))
                    dirty.add(file)
                elif kind == "scalars":
                    _, _, step, wall_time, pairs, _ = item
                    self._handle(file).write(b"".join(
                        _record(Event(wall_time=wall_time, step=step, summary=Summary(
                            value=[Summary.Value(tag=tag, simple_value=value)]
                        )).SerializeToString())
                        for tag, value in pairs
                    ))  # fmt: skip
                    dirty.add(file)
            except Exception as error:
                file.error = file.error or error
            if kind == "sync":
                _, _, close, done, seq = item
                try:
                    for each in list(dirty) if file is None else [file]:
                        self._flush(each)
                        dirty.discard(each)
                    if close and file is not None and file in self._open:
                        self._open.pop(file).close()
                except OSError as error:  # closing flushes: a full disk, said by the caller
                    file.error = file.error or error
                finally:  # the waiting caller is always released
                    if file is None:
                        self.synced_all = seq
                    if done is not None:
                        done.set()
            elif self._queue.empty():  # caught up: what TensorBoard reads is on disk
                for each in dirty:
                    self._flush(each)
                dirty.clear()

    def _flush(self, file: SharedEventFile) -> None:
        handle = self._open.get(file)
        if handle is not None:
            try:
                handle.flush()
            except OSError as error:
                file.error = file.error or error


SERVICE = EventFileService()
atexit.register(SERVICE.wait)  # whatever is queued reaches the disk before the process ends


class SharedEventFile:
    """``tensorboard``'s ``EventFileWriter`` (same file name, same first event), written by
    ``SERVICE``'s thread."""

    def __init__(self, logdir: str, filename_suffix: str = "") -> None:
        os.makedirs(logdir, exist_ok=True)
        self._logdir = logdir
        self.path = os.path.join(logdir, "events.out.tfevents.%010d.%s.%s.%s" % (  # noqa: UP031
            time.time(), socket.gethostname(), os.getpid(), event_file_writer._global_uid.get(),
        )) + filename_suffix  # fmt: skip
        open(self.path, "wb").close()  # there at once, as EventFileWriter's
        self.error: BaseException | None = None
        self._closed = False
        self._last = self._synced = 0  # its last item's and its last sync's sequence numbers
        self.add_event(Event(
            wall_time=time.time(), file_version="brain.Event:2",
            source_metadata=SourceMetadata(writer="tensorboard.summary.writer.event_file_writer"),
        ))  # fmt: skip

    def __hash__(self) -> int:
        return id(self)

    def get_logdir(self) -> str:
        return self._logdir

    def add_event(self, event: Event) -> None:
        if not isinstance(event, Event):
            raise TypeError(f"Expected an event_pb2.Event proto, but got {type(event)}")
        if not self._closed:
            self._last = SERVICE.submit(("events", self, [event.SerializeToString()]))

    def add_scalars(self, step: int, wall_time: float, pairs: list[tuple[str, float]]) -> None:
        """One event per ``(tag, value)``, as ``SummaryWriter.add_scalar`` writes each."""
        if not self._closed:
            self._last = SERVICE.submit(("scalars", self, step, wall_time, pairs))

    def _pending(self) -> bool:
        """Whether events of this file may not be on disk yet (no sync since its last)."""
        return self._last > max(self._synced, SERVICE.synced_all)

    def flush(self) -> None:
        if self._pending():  # else one round trip to the thread saved (1,024 at K=1024)
            self._synced = SERVICE.wait(self)
        self._raise()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._pending():
                self._synced = SERVICE.wait(self, close=True)
            else:  # its handle closed on the thread; nothing to wait for
                SERVICE.submit(("sync", self, True, None))
        self._raise()

    def reopen(self) -> None:
        self._closed = False

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise OSError(f"could not write TensorBoard events to {self.path}: {error}") from error


class _SharedFileWriter(FileWriter):
    def __init__(self, log_dir: str, max_queue: int = 10, flush_secs: int = 120,
                 filename_suffix: str = "") -> None:  # fmt: skip
        self.event_writer = SharedEventFile(str(log_dir), filename_suffix)


class SharedSummaryWriter(SummaryWriter):
    """``SummaryWriter`` whose event files are ``SharedEventFile``s."""

    @override
    def _get_file_writer(self) -> FileWriter:
        if self.all_writers is None or self.file_writer is None:
            purge_step, self.purge_step = self.purge_step, None
            self.file_writer = _SharedFileWriter(self.log_dir, filename_suffix=self.filename_suffix)
            self.all_writers = {self.file_writer.get_logdir(): self.file_writer}
            if purge_step is not None:  # as SummaryWriter's own
                from tensorboard.compat.proto.event_pb2 import SessionLog

                self.file_writer.add_event(Event(step=purge_step, file_version="brain.Event:2"))
                self.file_writer.add_event(
                    Event(step=purge_step, session_log=SessionLog(status=SessionLog.START))
                )
        return self.file_writer


def plain_yaml(hparams: Any) -> str | None:
    """``hparams.yaml``'s text as Lightning's ``save_hparams_to_yaml`` writes it, in one libyaml
    dump, where every value is a plain scalar; else ``None`` (Lightning's own path then)."""
    if not yaml.__with_libyaml__ or not isinstance(hparams, dict):
        return None
    if not all(isinstance(v, _PLAIN) for v in hparams.values()):
        return None
    return yaml.dump(dict(hparams), Dumper=yaml.CDumper)


class MemberTensorBoardLogger(TensorBoardLogger):
    """``TensorBoardLogger`` (same arguments, folders and files) whose event files are written
    by the process's one writer thread (see the module docstring)."""

    def _local(self) -> bool:
        return "://" not in str(self.root_dir)

    @property
    @override
    def experiment(self) -> SummaryWriter:
        if isinstance(self._experiment, SharedSummaryWriter):
            return self._experiment  # created on rank zero only, below
        if self._experiment is None and self._local() and rank_zero_only.rank == 0:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = SharedSummaryWriter(log_dir=self.log_dir, **self._kwargs)
        return super().experiment

    @override
    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        experiment = self.experiment
        if not isinstance(experiment, SharedSummaryWriter) or step is None:
            return super().log_metrics(metrics, step)
        pairs = []
        for name, value in metrics.items():
            if isinstance(value, Tensor) and value.numel() == 1:
                value = value.item()
            if not isinstance(value, (int, float)):  # a dict, a string: Lightning's own path
                return super().log_metrics(metrics, step)
            tag = f"{self._prefix}{self.LOGGER_JOIN_CHAR}{name}" if self._prefix else name
            pairs.append((tag, float(value)))
        file = experiment._get_file_writer().event_writer
        file.add_scalars(int(step), time.time(), pairs)

    @override
    @rank_zero_only
    def save(self) -> None:
        path = os.path.join(self.log_dir, self.NAME_HPARAMS_FILE)
        if self._local() and os.path.isdir(self.log_dir) and not os.path.isfile(path):
            text = plain_yaml(self.hparams)
            if text is not None:  # else Lightning writes it below
                with open(path, "w", newline="") as fh:
                    fh.write(text)
        super().save()
