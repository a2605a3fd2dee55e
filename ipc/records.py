"""The one run-record writer and reader: `<data_dir>/runs/<run_id>/` (see docs/records.md)."""

from __future__ import annotations

import csv
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.metrics import StepRecord

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


def new_run_id() -> str:
    """A sortable, unique id: local start time to the millisecond, then two random hex digits."""
    now = time.time()
    millis = int(now * 1000) % 1000
    return (
        f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}-{millis:03d}{secrets.token_hex(1)}"
    )


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
        self.run_id = run_id or new_run_id()
        self.folder = runs_dir(data_dir) / self.run_id
        self.folder.mkdir(parents=True, exist_ok=False)
        self._lock = threading.Lock()
        self._t0 = time.time()
        self._run = {
            "run_id": self.run_id,
            "status": "running",
            "started": _iso(self._t0),
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
        self._steps = open(self.folder / "steps.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        self._devices = open(self.folder / "devices.csv", "a", newline="", encoding="utf-8")  # noqa: SIM115
        self._csv = csv.writer(self._devices)
        self._csv.writerow(DEVICE_COLUMNS)
        self._closed = False
        self._write_run()

    def step(self, step: StepRecord, mean_acceptance_length: float | None) -> None:
        """Append one step line: the StepRecord fields and the running acceptance length."""
        line = {**asdict(step), "mean_acceptance_length": mean_acceptance_length}
        line["time_s"] = round(time.time() - self._t0, 6)
        with self._lock:
            if not self._closed:
                self._steps.write(json.dumps(line) + "\n")
                self._steps.flush()

    def sample(self, sample: Any) -> None:
        """Append one device sample (a backends.base.Sample); safe from the sampler thread."""
        row = [f"{sample.time:.3f}", sample.device_id, sample.phase]
        row += ["" if (v := getattr(sample, c)) is None else v for c in DEVICE_COLUMNS[3:]]
        with self._lock:
            if not self._closed:
                self._csv.writerow(row)
                self._devices.flush()

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
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._steps.close()
            self._devices.close()
        self._run.update(status=status, finished=_iso(time.time()), error=error)
        if summary is not None:
            self._run["summary"] = {**summary, "run_id": self.run_id}
        self._write_run()

    def _write_run(self) -> None:
        tmp = self.folder / "run.json.tmp"
        tmp.write_text(json.dumps(self._run, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.folder / "run.json")
        (self.folder / "summary.md").write_text(summary_markdown(self._run), encoding="utf-8")


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
    """Every readable run record, oldest first."""
    root = runs_dir(data_dir)
    if not root.is_dir():
        return []
    runs = [_read_run(f) for f in sorted(root.iterdir()) if f.is_dir()]
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


def load_run(data_dir: str | os.PathLike, run_id: str) -> dict:
    """run.json of one run (unique prefix ok), with `steps` read from steps.jsonl."""
    folder = find_run(data_dir, run_id)
    run = _read_run(folder)
    if run is None:
        raise RunNotFound(f"run record {folder} has no readable run.json")
    steps = []
    steps_file = folder / "steps.jsonl"
    if steps_file.exists():
        for line in steps_file.read_text(encoding="utf-8").splitlines():
            try:
                steps.append(json.loads(line))
            except ValueError:
                break  # a line cut short by a crash ends the readable steps
    run["steps"] = steps
    run["folder"] = str(folder)
    return run
