"""The one run-record writer and reader: `<data_dir>/runs/<run_id>/` (see docs/records.md)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.metrics import StepRecord
from ipc.owners import owner_gone, process_identity

PROMPTS_FILE = "prompts.jsonl"  # a workload's rows, one per prompt done
DEVICE_COLUMNS = (
    "time",
    "device_id",
    "phase",
    "memory_used_bytes",
    "memory_total_bytes",
    "utilization_percent",
    "power_watts",
    "power_limit_watts",
    "temperature_c",
)


class RunNotFound(LookupError):
    """No run record matches the id the user gave; the message is one line."""


class RecordError(OSError):
    """A run record that cannot be written; its text is one line for the user."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


class RecordDirError(RecordError):
    """The data directory cannot hold a new record (read-only, missing rights): bad setup."""


class RecordWriteError(RecordError):
    """A write to a run record failed (a full disk): the problem and the file it hit."""

    @classmethod
    def of(cls, exc: OSError, path: Path) -> RecordWriteError:
        return cls(exc.errno, f"{_reason(exc)} writing {path}")


def _reason(exc: OSError) -> str:
    """`no space left on device` from an OSError."""
    return (exc.strerror or type(exc).__name__).lower()


RUN_ID_RANDOM_HEX = 6  # 24 random bits; across processes RunRecorder's exclusive mkdir decides
_issued_lock = threading.Lock()
_issued: tuple[int, set[str]] = (-1, set())  # this process's ids of the current millisecond


def new_run_id() -> str:
    """A sortable id: local start time to the millisecond, then six random hex digits.

    Never the same twice in one process; RunRecorder claims its folder exclusively, so two
    processes cannot end up sharing one either.
    """
    global _issued
    while True:
        now = time.time()
        stamp = int(now * 1000)
        run_id = (
            f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}-{stamp % 1000:03d}"
            f"{secrets.token_hex(RUN_ID_RANDOM_HEX // 2)}"
        )
        with _issued_lock:
            if _issued[0] != stamp:
                _issued = (stamp, set())
            if run_id not in _issued[1]:
                _issued[1].add(run_id)
                return run_id


class RunIdTaken(ValueError):
    """A run id the caller chose names a record that exists already; the message is one line."""


def _private_folder(folder: Path) -> None:
    """`folder` (and missing parents) made, or tightened, to owner-only: records hold prompts."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if folder.stat().st_mode & 0o077:
        folder.chmod(0o700)


def _claim_folder(root: Path, run_id: str | None) -> tuple[str, Path]:
    """(id, folder) of a new record folder, made exclusively: no two runs share one."""
    if run_id is not None:
        try:
            (root / run_id).mkdir(mode=0o700)
        except FileExistsError:
            raise RunIdTaken(f"a run record {run_id!r} exists already in {root}") from None
        return run_id, root / run_id
    while True:
        candidate = new_run_id()
        try:
            (root / candidate).mkdir(mode=0o700)
        except FileExistsError:
            continue  # another process took this id in the same millisecond: draw again
        return candidate, root / candidate


def runs_dir(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / "runs"


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


class RunRecorder:
    """Writes one run's record as the run goes; every write leaves valid files behind."""

    def __init__(
        self,
        data_dir: str | os.PathLike,
        *,
        target_model: str,
        draft_model: str,
        placement: Mapping[str, Any],
        mode: str,
        options: Mapping[str, Any],
        run_id: str | None = None,
    ) -> None:
        root = runs_dir(data_dir)
        try:
            if not Path(data_dir).exists():  # a new data dir is the owner's alone (0700)
                Path(data_dir).mkdir(parents=True, mode=0o700)
            _private_folder(root)
            self.run_id, self.folder = _claim_folder(root, run_id)
        except RunIdTaken:
            raise
        except OSError as exc:
            where = exc.filename or root
            raise RecordDirError(
                exc.errno, f"cannot keep run records in {where}: {_reason(exc)}"
            ) from None
        self._lock = threading.Lock()
        self.write_error: RecordWriteError | None = None  # the first failed write ends the run
        self._t0 = time.time()
        self._run = {
            "run_id": self.run_id,
            "status": "running",
            "started": _iso(self._t0),
            "started_unix": round(self._t0, 3),  # the origin of steps.jsonl's time_s
            "finished": None,
            "host": socket.gethostname(),
            "target_model": target_model,
            "draft_model": draft_model,
            "placement": dict(placement),
            "mode": mode,
            "options": dict(options),
            "error": None,
            "summary": None,
        }
        self._steps = _AppendOnly(self.folder / "steps.jsonl")
        self._devices = _AppendOnly(self.folder / "devices.csv")
        self._prompts: _AppendOnly | None = None  # prompts.jsonl, made by a workload's first row
        self._closed = False
        self._devices.append(_csv_line(DEVICE_COLUMNS))
        self._write_run()

    @property
    def options(self) -> dict:
        """The run's options as recorded."""
        return dict(self._run["options"])

    def step(self, step: StepRecord, mean_acceptance_length: float | None) -> None:
        """Append one step line; raises RecordWriteError once any write of the record failed."""
        line = {**asdict(step), "mean_acceptance_length": mean_acceptance_length}
        line["time_s"] = round(time.time() - self._t0, 6)
        self._append(self._steps, json.dumps(line) + "\n")

    def prompt(self, row: Mapping[str, Any]) -> None:
        """Append one prompt's row to prompts.jsonl (a workload's: one line per prompt done);
        raises RecordWriteError once any write of the record failed."""
        line = {**row, "time_s": round(time.time() - self._t0, 6)}
        if self._prompts is None:
            with self._lock:
                if self._closed:
                    return
                self._prompts = _AppendOnly(self.folder / PROMPTS_FILE)
        self._append(self._prompts, json.dumps(line) + "\n")

    def sample(self, sample: Any) -> None:
        """Append one device sample (a backends.base.Sample); safe from the sampler thread.

        A failed write is kept for the run's next step to raise, not raised in the sampler.
        """
        row = [f"{sample.time:.3f}", sample.device_id, sample.phase]
        row += ["" if (v := getattr(sample, c)) is None else v for c in DEVICE_COLUMNS[3:]]
        with contextlib.suppress(RecordWriteError):
            self._append(self._devices, _csv_line(row))

    def _append(self, file: _AppendOnly, text: str) -> None:
        with self._lock:
            if self.write_error is not None:
                raise self.write_error
            if self._closed:
                return
            try:
                file.append(text)
            except RecordWriteError as exc:
                self.write_error = exc
                raise

    def finish(self, summary: Mapping[str, Any]) -> None:
        """The run ended well: store its summary (the `run --json` document)."""
        self._close("done", summary=dict(summary))

    def fail(self, text: str, summary: Mapping[str, Any] | None = None) -> None:
        """The run failed: keep what was written and say why."""
        self._close("failed", error=text, summary=dict(summary) if summary else None)

    def stopped(self, summary: Mapping[str, Any] | None = None) -> None:
        """The user stopped the run."""
        self._close("stopped", summary=dict(summary) if summary else None)

    def _close(self, status: str, *, summary: dict | None = None, error: str | None = None):
        """Write the final status; raises RecordWriteError if it cannot (the old one stays)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for file in (self._steps, self._devices, self._prompts):
                if file is not None:
                    file.close()
        self._run.update(status=status, finished=_iso(time.time()), error=error)
        if summary is not None:
            self._run["summary"] = {**summary, "run_id": self.run_id}
        self._write_run()
        _owner_marker(self.folder).unlink(missing_ok=True)

    def _write_run(self) -> None:
        _replace_text(self.folder / "run.json", json.dumps(self._run, indent=2) + "\n")
        _replace_text(self.folder / "summary.md", summary_markdown(self._run))
        marker = _owner_marker(self.folder)
        if self._run["status"] == "running" and not marker.exists():
            _replace_text(marker, json.dumps(process_identity()))


class _AppendOnly:
    """A file that grows by whole pieces: a write that fails is cut back off, never left half."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise RecordWriteError.of(exc, path) from None

    def append(self, text: str) -> None:
        data = memoryview(text.encode("utf-8"))
        start = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)
            raise RecordWriteError.of(exc, self.path) from None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def _csv_line(row: Any) -> str:
    out = io.StringIO()
    csv.writer(out).writerow(row)
    return out.getvalue()


def _replace_text(path: Path, text: str) -> None:
    """Write a whole file or leave the old one: through a temporary file and a rename."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise RecordWriteError.of(exc, path) from None


# -- records whose writer died: marked `interrupted` by the next specdeck command ---------

OWNER_MARKER = ".owner"


def _owner_marker(folder: Path) -> Path:
    return folder / OWNER_MARKER


def mark_interrupted(data_dir: str | os.PathLike) -> list[str]:
    """Mark `interrupted` the running records whose specdeck process is gone; their ids."""
    marked = []
    for marker in runs_dir(data_dir).glob(f"*/{OWNER_MARKER}"):
        try:
            identity = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not owner_gone(identity):
            continue
        run = _read_run(marker.parent)
        try:
            if run is not None and run.get("status") == "running":
                run.update(
                    status="interrupted",
                    error=f"specdeck (pid {identity['pid']}) ended without closing this run",
                )
                _replace_text(marker.parent / "run.json", json.dumps(run, indent=2) + "\n")
                _replace_text(marker.parent / "summary.md", summary_markdown(run))
                marked.append(run["run_id"])
            marker.unlink(missing_ok=True)
        except OSError:
            continue  # a read-only record stays as it is
    return marked


def _fmt(value: Any, spec: str = ".2f", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def placement_text(placement: Mapping[str, Any]) -> str:
    """`cuda:0,cuda:1 <- cuda:2`: target devices, then the draft device."""
    return f"{','.join(placement.get('target', []))} <- {placement.get('draft', '?')}"


def summary_markdown(run: Mapping[str, Any]) -> str:
    """The human-readable page of a run record."""
    s = run.get("summary") or {}
    lines = [
        f"# Run {run['run_id']}",
        "",
        f"- status: {run['status']}" + (f" ({run['error']})" if run.get("error") else ""),
        f"- started: {run['started']} on {run.get('host', '?')}",
        f"- target: {run['target_model']}",
        f"- draft: {run['draft_model']}",
        f"- placement: {placement_text(run['placement'])} ({run['mode']})",
        f"- options: {', '.join(f'{k}={v}' for k, v in run['options'].items() if k != 'prompt')}",
        "",
        "| figure | value |",
        "| --- | --- |",
        *([f"| prompts | {s['prompt_count']} |"] if "prompt_count" in s else []),
        f"| steps | {s.get('steps', 'n/a')} |",
        f"| new tokens | {s.get('new_tokens', 'n/a')} |",
        f"| mean acceptance length | {_fmt(s.get('mean_acceptance_length'))} |",
        f"| acceptance rate | {_fmt(s.get('acceptance_rate'), '.1%')} |",
        f"| decode tok/s | {_fmt(s.get('decode_tokens_per_s'), '.1f')} |",
        f"| speedup | {_fmt(s.get('speedup'), '.2f', 'x')} |",
        f"| prefill s | {_fmt(s.get('prefill_s'), '.3f')} |",
        f"| wall s | {_fmt(s.get('wall_s'), '.3f')} |",
    ]
    if s.get("output_text"):
        lines += ["", "## Output", "", "```", s["output_text"], "```"]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class RunSummary:
    """One line of `specdeck runs`."""

    run_id: str
    started: str
    status: str
    target_model: str
    draft_model: str
    placement: str
    mode: str
    mean_acceptance_length: float | None
    acceptance_rate: float | None
    decode_tokens_per_s: float | None
    speedup: float | None


def _summary_of(run: Mapping[str, Any]) -> RunSummary:
    s = run.get("summary") or {}
    return RunSummary(
        run_id=run["run_id"],
        started=run.get("started", ""),
        status=run.get("status", "?"),
        target_model=run.get("target_model", "?"),
        draft_model=run.get("draft_model", "?"),
        placement=placement_text(run.get("placement", {})),
        mode=run.get("mode", "?"),
        mean_acceptance_length=s.get("mean_acceptance_length"),
        acceptance_rate=s.get("acceptance_rate"),
        decode_tokens_per_s=s.get("decode_tokens_per_s"),
        speedup=s.get("speedup"),
    )


def _read_run(folder: Path) -> dict | None:
    try:
        run = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # a folder being written or damaged is skipped, not fatal
    return run if isinstance(run, dict) and "run_id" in run else None


def list_runs(data_dir: str | os.PathLike) -> list[RunSummary]:
    """Every readable run record, newest first (ids begin with the start time)."""
    root = runs_dir(data_dir)
    if not root.is_dir():
        return []
    runs = [_read_run(f) for f in sorted(root.iterdir(), reverse=True) if f.is_dir()]
    return [_summary_of(r) for r in runs if r is not None]


def find_run(data_dir: str | os.PathLike, run_id: str) -> Path:
    """The folder of the run whose id is `run_id` or starts with it (unique prefix)."""
    root = runs_dir(data_dir)
    if (root / run_id).is_dir() and run_id.strip("./"):
        return root / run_id
    matches = sorted(f for f in root.glob("*") if f.is_dir() and f.name.startswith(run_id))
    if not run_id or not matches:
        raise RunNotFound(f"no run record {run_id!r} in {root}")
    if len(matches) > 1:
        names = ", ".join(m.name for m in matches[:5])
        raise RunNotFound(f"run id {run_id!r} is ambiguous: {names}")
    return matches[0]


def load_run(data_dir: str | os.PathLike, run_id: str, *, steps: bool = True) -> dict:
    """run.json of one run (unique prefix ok), with `steps` read from steps.jsonl (unless
    `steps` is False: a long run's are read one at a time with `read_steps`) and `prompts`
    (a workload's rows) from prompts.jsonl."""
    folder = find_run(data_dir, run_id)
    run = _read_run(folder)
    if run is None:
        raise RunNotFound(f"run record {folder} has no readable run.json")
    if steps:
        run["steps"] = list(read_steps(folder))
    run["prompts"] = list(read_prompt_rows(folder))
    run["folder"] = str(folder)
    return run


def read_lines(path: Path) -> Iterator[dict]:
    """The JSON objects of a record's .jsonl file, one line at a time (none if it is absent);
    a line cut short by a crash ends them."""
    try:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    yield json.loads(line)
                except ValueError:
                    return
    except FileNotFoundError:
        return


def read_steps(folder: str | os.PathLike) -> Iterator[dict]:
    """A record's step lines (steps.jsonl), one at a time."""
    return read_lines(Path(folder) / "steps.jsonl")


def read_prompt_rows(folder: str | os.PathLike) -> Iterator[dict]:
    """A workload's prompt rows (prompts.jsonl), in the order the prompts finished."""
    return read_lines(Path(folder) / PROMPTS_FILE)


_NUMERIC_COLUMNS = tuple(c for c in DEVICE_COLUMNS if c not in ("device_id", "phase"))


def read_device_rows(folder: str | os.PathLike) -> Iterator[dict]:
    """devices.csv of a record, one sample at a time (numbers as floats, an empty cell as
    None); a row cut short by a crash ends them."""
    try:
        with (Path(folder) / "devices.csv").open(encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                if None in row.values() or not row.get("device_id"):
                    return
                try:
                    values = {c: float(row[c]) if row[c] else None for c in _NUMERIC_COLUMNS}
                except ValueError:
                    return
                if values["time"] is None:
                    return
                yield {**values, "device_id": row["device_id"], "phase": row["phase"]}
    except FileNotFoundError:
        return
