"""The dashboard's run from launch to end, as plain Python (no Textual).

`LiveRun` checks the run spec the screen builds (`ipc.run_spec.check_run`, off the caller's
thread: it reads model files), starts it (`ipc.runner.start_run`), turns the run's events into
the figures, output text, log lines and state the screen shows, and stops the run. Whatever
comes from another thread reaches `LiveRun.apply` through `deliver`, which the screen makes a
message to itself; so the view is only ever called on its own thread. A run that another
process started can be watched instead (`LiveRun.watch`): a `WatchedRun` reads its watch
endpoint (`ipc.watch`) and its events fill the same figures, read-only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from app.progress import WorkloadProgress

if TYPE_CHECKING:
    from app.config import Config
    from backends.discovery import Inventory
    from backends.sampler import SampleFeed
    from ipc import events as ev
    from ipc.run_spec import CheckedRun, RunSpec, Workload
    from ipc.watch import LiveWatch, RunHeader

RUN_OVER = ("done", "stopped", "failed")
HISTORY = 240  # steps of AL and tokens/s history kept for the sparklines
# what the run controls call the options, for the one check's refusals
OPTION_NAMES = {
    "k": "k",
    "max_new_tokens": "max new tokens",
    "temperature": "temperature",
    "n": "n",
    "repeat": "repeat",
    "duration": "the time bound",
}


@dataclass(frozen=True)
class AcceptanceFigures:
    """What the acceptance pane shows; None = nothing reported yet."""

    last_al: int | None = None
    mean_al: float | None = None
    rate: float | None = None
    per_position: tuple[float, ...] = ()
    history: tuple[int, ...] = ()
    k: int | None = None

    def after_step(
        self,
        committed: int,
        k: int,
        mean_al: float | None,
        rate: float | None,
        per_position: tuple[float, ...],
    ) -> AcceptanceFigures:
        """The figures once one more step has been reported."""
        return replace(
            self,
            last_al=committed,
            mean_al=mean_al,
            rate=rate,
            per_position=tuple(per_position),
            history=(*self.history, committed)[-HISTORY:],
            k=k or self.k,
        )


@dataclass(frozen=True)
class ThroughputFigures:
    """What the throughput pane shows; None = not reported (yet)."""

    now: float | None = None  # tokens per second of the last step
    mean: float | None = None  # decode tokens per second so far
    baseline: float | None = None  # target-only decode tokens per second
    draft_s: float = 0.0
    verify_s: float = 0.0
    transport_s: float = 0.0
    history: tuple[float, ...] = ()

    @property
    def speedup(self) -> float | None:
        """Mean decode throughput over the baseline's, once both are known."""
        from engine.metrics import speedup  # loads with the first run, not the first frame

        return speedup(self.mean, self.baseline)

    def after_step(
        self,
        committed: int,
        draft_s: float,
        verify_s: float,
        transport_s: float,
        mean: float | None,
    ) -> ThroughputFigures:
        """The figures once one more step has been reported."""
        step_s = draft_s + verify_s + transport_s
        now = committed / step_s if step_s > 0 else None
        return replace(
            self,
            now=now,
            mean=mean,
            draft_s=self.draft_s + draft_s,
            verify_s=self.verify_s + verify_s,
            transport_s=self.transport_s + transport_s,
            history=(*self.history, now)[-HISTORY:] if now is not None else self.history,
        )


@dataclass(frozen=True)
class RunningDaemon:
    """A daemon of the run going on: its pid and the devices it was given."""

    pid: int
    device_ids: tuple[str, ...]


@dataclass(frozen=True)
class Launched:
    """The checked run has started (delivered ahead of any of its events)."""

    run: CheckedRun
    run_id: str


@dataclass(frozen=True)
class LaunchRefused:
    """The one check refused the spec; `text` says why in one line."""

    text: str


@dataclass(frozen=True)
class LaunchFailed:
    """The checked run could not start (a data folder that cannot be written, a bug)."""

    text: str


@dataclass(frozen=True)
class Watching:
    """A run of another process is being watched (delivered ahead of any of its events)."""

    header: RunHeader


@dataclass(frozen=True)
class WatchFailed:
    """The run asked for could not be watched (it ended, it never answered); one line."""

    text: str


@dataclass(frozen=True)
class FromWatch:
    """An item of a watched run, tagged with it: one from a watch left since is dropped."""

    run: WatchedRun
    item: object


class WatchedRun:
    """A run that another process started, as a read-only `ipc.events.RunControl`: its
    events come from its watch endpoint; `stop()` is refused, `close()` only stops watching."""

    read_only = True

    def __init__(self, live: LiveWatch, relay: Callable[[object], object]) -> None:
        self.run_id = live.run_id
        self.record_dir = live.record_dir
        self.owner_pid = int(live.owner.get("pid", 0))
        self.error: ev.ErrorEvent | None = None
        self.result: dict | None = None
        self._live = live
        self._relay = relay
        self._pids: dict[str, int] = {}
        self._leave = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._read, name=f"watch-{live.run_id}", daemon=True)

    def start(self) -> None:
        """Subscribe and relay what comes, on a thread of its own."""
        self._thread.start()

    @property
    def pids(self) -> dict[str, int]:
        """role -> pid of each daemon the run has said it started."""
        return dict(self._pids)

    @property
    def finished(self) -> bool:
        """Whether the run has ended (or this watch was closed)."""
        return self._done.is_set()

    def stop(self) -> None:
        """Refused: the run belongs to the process that started it."""
        raise PermissionError(
            f"run {self.run_id} is watched read-only: stop it where it was started "
            f"(pid {self.owner_pid})"
        )

    def close(self) -> None:
        """Stop watching; the run goes on."""
        self._leave.set()

    def wait(self, timeout: float | None = None) -> dict | None:
        """The run's document once it ended, or None (failed, stopped, still going)."""
        self._done.wait(timeout)
        return self.result

    def wait_to_end(self) -> dict | None:
        return self.wait()

    def _read(self) -> None:
        from backends.base import Sample
        from ipc import events as ev
        from ipc.watch import WatchError, WatchFeed

        try:
            with WatchFeed(self._live) as feed:
                header = feed.hello()
                self._relay(Watching(header))
                while not feed.ended and not self._leave.is_set():
                    item = feed.next(0.25)
                    match item:
                        case ev.DaemonEvent(role=role, pid=pid):
                            self._pids[role] = pid
                        case ev.ErrorEvent():
                            self.error = item
                        case ev.DoneEvent(result=result):
                            self.result = result
                    if item is not None and not isinstance(item, Sample):  # the cards sample
                        self._relay(item)
        except WatchError as exc:
            self._relay(WatchFailed(str(exc)))
        except Exception as exc:  # a bug in reading must not end the dashboard
            self._relay(WatchFailed(f"{type(exc).__name__}: {exc}"))
        finally:
            self._done.set()


class RunView(Protocol):
    """What the screen shows of the run; `LiveRun` calls it on the view's own thread only."""

    def show_status(self, text: str) -> None:
        """What the run is doing, in a few words."""
        ...

    def add_log(self, text: str, level: str = "info", role: str = "") -> None:
        """One line of the event log."""
        ...

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: str = "information",
        timeout: float | None = None,
    ) -> None:
        """A notification (Textual's `notify`)."""
        ...

    def show_figures(self, acceptance: AcceptanceFigures, throughput: ThroughputFigures) -> None:
        """The figures at a run's start or end, shown now."""
        ...

    def step_figures(self, acceptance: AcceptanceFigures, throughput: ThroughputFigures) -> None:
        """The live figures after a step; shown now or within a fraction of a second (a view
        may skip some of many steps, never the last: `show_figures` or a later step's)."""
        ...

    def begin_output(self, prompt: str) -> None:
        """A new run of this prompt: its output starts empty."""
        ...

    def append_output(self, text: str) -> None:
        """Newly generated text."""
        ...

    def finish_output(self, text: str) -> None:
        """The run's whole output, as its record holds it."""
        ...

    def show_running(self, running: bool) -> None:
        """A run started (Stop enabled) or ended (Launch enabled)."""
        ...

    def show_daemons(self, daemons: Mapping[str, RunningDaemon]) -> None:
        """The daemons running now, by role (none once the run is over)."""
        ...

    def show_workload(self, progress: WorkloadProgress | None) -> None:
        """A workload's progress (prompt i of N, ETA); None for a run of one prompt."""
        ...


def status_text(state: str, text: str) -> str:
    """A daemon's status as one phrase that says its state once (not `loading loading m`)."""
    if not text:
        return state
    if text.split(maxsplit=1)[0].lower().startswith(state[:4]):  # `decoding` says `decode`
        return text
    return f"{state} — {text}"


def done_summary(result: Mapping) -> str:
    """`done: 40 tokens, mean AL 3.00, 12.5 tok/s, speedup 1.40×` from a run's document."""
    summary = f"done: {result.get('new_tokens', '?')} tokens"
    if result.get("mean_acceptance_length") is not None:
        summary += f", mean AL {result['mean_acceptance_length']:.2f}"
    if result.get("decode_tokens_per_s") is not None:
        summary += f", {result['decode_tokens_per_s']:.1f} tok/s"
    if result.get("speedup") is not None:
        summary += f", speedup {result['speedup']:.2f}×"
    return summary


def decode_paths_text(result: Mapping) -> str | None:
    """`decode paths: target cuda-graph [triton] (captured in 1.6 s); draft lean (no CUDA)`:
    each role's path, its graphs' kernels, why not faster and its capture seconds, as the
    run ended (a role that left its graphs mid-run says so), or None without them."""
    paths = result.get("decode_paths") or {}
    parts = []
    for role in ("target", "draft"):
        path = paths.get(role) or {}
        if not path.get("path"):
            continue
        notes = [path["reason"]] if path.get("reason") else []
        if path.get("capture_s"):
            notes.append(f"captured in {path['capture_s']:.1f} s")
        if path.get("kernels_reason"):
            notes.append(path["kernels_reason"])
        kernels = f" [{path['kernels']}]" if path.get("kernels") else ""
        parts.append(
            f"{role} {path['path']}{kernels}" + (f" ({'; '.join(notes)})" if notes else "")
        )
    return "decode paths: " + "; ".join(parts) if parts else None


class LiveRun:
    """The dashboard's one run at a time: launched from a spec, followed, stopped.

    `deliver(item)` is called from other threads (the launch check's, the run's) and must
    hand `item` to the view's thread without waiting; there the caller passes it to `apply`.
    """

    def __init__(
        self,
        view: RunView,
        deliver: Callable[[object], object],
        *,
        config: Config,
        sampler: SampleFeed | None = None,
        model_dirs: Iterable[str] = (),
        data_dir: Path | None = None,
        follow_run: Callable[[CheckedRun, str], Callable[[object], None]] | None = None,
    ) -> None:
        """`follow_run(run, run_id)`: called as each run starts, returns a callback that gets
        its events too, on the run's thread (`--metrics-port`: the exporter)."""
        self.view = view
        self.deliver = deliver
        self.config = config
        self.sampler = sampler
        self.model_dirs = tuple(model_dirs)
        self.data_dir = data_dir
        self.follow_run = follow_run
        self._follower: Callable[[object], None] | None = None  # the run's, from follow_run
        self.handle: ev.RunControl | None = None  # the run going on, from its start to its end
        self.outcome: str | None = None  # how the last run ended: done, stopped or failed
        self.acceptance = AcceptanceFigures()
        self.throughput = ThroughputFigures()
        self.daemons: dict[str, RunningDaemon] = {}
        self.output = ""  # the text the run has generated so far (of its prompt going on)
        self.workload: WorkloadProgress | None = None  # a workload's progress; None: one prompt
        self._prompts: Workload | None = None  # the launched workload's prompts, for the output
        self._next_prompt: str | None = None  # a workload's next prompt, shown at its first step
        self._checking = False  # a launch is being checked; no handle yet
        self._order = threading.Lock()  # a run's events queue up behind its Launched
        self._closed = False  # quitting: no run starts any more
        self._sent = 0  # the run's events handed to `deliver` (on the run's thread)
        self._taken = 0  # and those `apply` has taken in since (on the view's thread)

    @property
    def busy(self) -> bool:
        """Whether a launch was asked for and its run has not ended (the placement is locked)."""
        return self._checking or self.handle is not None

    # -- asked by the screen (its thread) -----------------------------------------------------

    def launch(self, spec: RunSpec | Callable[[], RunSpec], inventory: Inventory) -> bool:
        """Check `spec` and start its run on a thread of its own; False, and a notice, when a
        run is going on. What comes of it arrives through `deliver`: LaunchRefused, or
        LaunchFailed, or Launched followed by the run's events. `spec` may be a function
        that builds it there (reading a suite or a prompts file is slow work); its
        EngineInputError is a refusal."""
        if self.busy:
            self._say_busy()
            return False
        self._checking = True
        self._taken = 0
        threading.Thread(
            target=self._check_and_start, args=(spec, inventory), name="launch", daemon=True
        ).start()
        return True

    @property
    def watched(self) -> bool:
        """Whether the run on screen is another process's, watched read-only."""
        return getattr(self.handle, "read_only", False)

    def watch(self, live: LiveWatch) -> bool:
        """Fill the panes from a run another process started (read-only); False, and a
        notice, while a run is on screen. What comes arrives through `deliver`: WatchFailed,
        or Watching followed by the run's events."""
        if self.busy:
            self._say_busy()
            return False
        self._taken = self._sent = 0
        handle = WatchedRun(live, lambda item: self._relay_watched(handle, item))
        self.handle = handle
        handle.start()
        return True

    def unwatch(self) -> bool:
        """Stop watching the run on screen (it goes on); False, and a notice, when none is."""
        if not self.watched:
            self.view.notify("no run is being watched", severity="warning")
            return False
        handle = self.handle
        handle.close()
        self.view.add_log(f"stopped watching run {handle.run_id}; it goes on")
        self._run_over("stopped watching")
        return True

    def _say_busy(self) -> None:
        if self.watched:
            text = f"watching run {self.handle.run_id}; press u to stop watching first"
        else:
            text = "a run is already going on; stop it first"
        self.view.notify(text, severity="warning")

    def stop(self) -> bool:
        """Ask the run going on to stop (its daemons end, its record is kept); False, and a
        notice, when there is none or it is another process's (watched read-only)."""
        if self.handle is None:
            self.view.notify("no run is going on", severity="warning")
            return False
        if self.watched:
            try:
                self.handle.stop()
            except PermissionError as exc:
                self.view.notify(str(exc), title="cannot stop", severity="warning")
            return False
        self.view.show_status("stopping…")
        try:
            self.handle.stop()  # it only asks: the run's thread stops the daemons
        except Exception as exc:  # already gone is fine; anything else is reported
            self.view.notify(f"stop: {exc}", severity="warning")
        return True

    def close(self, timeout_s: float = 15.0) -> None:
        """Stop the run going on and wait for its daemons to end; none starts after this."""
        with self._order:
            self._closed = True
            handle = self.handle
        if getattr(handle, "read_only", False):
            handle.close()  # a watched run is not ours to stop
        elif handle is not None:
            try:
                handle.stop()
                handle.wait(timeout_s)
            except Exception:  # quitting goes on whatever the daemons say
                pass

    def notice_end(self) -> None:
        """End the run on screen if its handle has finished though its last event never came
        (none is still on its way to `apply`)."""
        handle = self.handle
        if handle is None or not handle.finished or self._taken < self._sent:
            return
        if handle.error is not None:
            self._run_over("failed")
        else:
            self._run_over("done" if handle.wait(0) is not None else "stopped")

    def apply(self, item: object) -> None:
        """Take in one delivered item (a launch outcome or a run event) and tell the view."""
        from ipc import events as ev  # loads with the first run, not the first frame

        if isinstance(item, FromWatch):
            if item.run is not self.handle:
                return  # from a watch left since: it no longer fills the panes
            item = item.item
        if not isinstance(item, Launched | LaunchRefused | LaunchFailed | Watching | WatchFailed):
            self._taken += 1
        match item:
            case Launched():
                self._launched(item)
            case Watching():
                self._watching(item.header)
            case WatchFailed(text=text):
                self.handle = None
                self.view.notify(text, title="cannot watch", severity="error")
            case LaunchRefused(text=text):
                self._checking = False
                self.view.notify(text, title="cannot launch", severity="error")
            case LaunchFailed(text=text):
                self._checking = False
                self.view.notify(text, title="launch failed", severity="error")
                self.view.add_log(f"launch failed: {text}", "error")
            case ev.StepEvent():
                self._step(item)
            case ev.TokenEvent(decode_tokens_per_s=rate, new_tokens=tokens) if rate is not None:
                self.view.show_status(f"baseline: {tokens} tokens")
            case ev.StatusEvent(role=role, state=state, text=text):
                self.view.add_log(status_text(state, text), role=role)
                self.view.show_status(f"{role}: {state}")
                if role == "run" and state in RUN_OVER:
                    self._run_over(state)
            case ev.LogEvent(level=level, text=text, role=role):
                self.view.add_log(text, level=level, role=role)
            case ev.ErrorEvent(role=role, text=text, exit_status=status):
                line = text if status is None else f"{text} (exit status {status})"
                self.view.add_log(line, level="error", role=role)
                self.view.notify(line, title=f"{role} failed", severity="error", timeout=10)
            case ev.DaemonEvent(role=role, pid=pid, device_ids=device_ids):
                self.daemons[role] = RunningDaemon(pid, tuple(device_ids))
                self.view.add_log(f"daemon pid {pid} on {', '.join(device_ids)}", role=role)
                self.view.show_daemons(dict(self.daemons))
            case ev.PromptEvent():
                self._prompt_done(item)
            case ev.DoneEvent(result=result):
                self._done(result)

    # -- on the launch thread -----------------------------------------------------------------

    def _check_and_start(self, spec: RunSpec | Callable[[], RunSpec], inventory: Inventory) -> None:
        """The one check every entry point makes, then the start; the outcome is delivered."""
        from backends.placement import PlacementError
        from engine.errors import EngineInputError
        from ipc.run_spec import check_run

        try:
            spec = spec() if callable(spec) else spec
            run = check_run(
                spec,
                inventory,
                model_dirs=[*self.config.model_dirs, *self.model_dirs],
                trusted=self.config.trust_remote_code,
                backend_python=self.config.backend_python,
                config_path=str(self.config.path),
                option_names=OPTION_NAMES,
            )
        except (EngineInputError, PlacementError) as exc:
            self.deliver(LaunchRefused(str(exc)))
            return
        except Exception as exc:  # a bug or an unreadable model folder: say so, go on
            self.deliver(LaunchFailed(f"{type(exc).__name__}: {exc}"))
            return
        from ipc.runner import start_run

        with self._order:
            if self._closed:  # the dashboard is quitting: no daemon may start now
                self.deliver(LaunchFailed("the dashboard is closing"))
                return
            self._sent = 0
            try:
                handle = start_run(
                    run,
                    inventory=inventory,
                    sampler=self.sampler,
                    on_event=self._relay,
                    data_dir=self.data_dir,
                )
            except Exception as exc:  # a data folder that cannot be written: say so, go on
                self.deliver(LaunchFailed(str(exc) or type(exc).__name__))
                return
            self.handle = handle
            if self.follow_run is not None:  # its events wait on _order: none is missed
                self._follower = self.follow_run(run, handle.run_id)
            self.deliver(Launched(run, handle.run_id))

    def _relay_watched(self, run: WatchedRun, item: object) -> None:
        """Hand an item of a watched run on from its reader's thread, while it is watched."""
        with self._order:
            if run is not self.handle:
                return  # left since
            delivered = self.deliver(FromWatch(run, item)) is not False
            if delivered and not isinstance(item, Watching | WatchFailed):
                self._sent += 1

    def _relay(self, event: ev.RunEvent) -> None:
        """Hand a run event on from the run's thread, never ahead of its Launched."""
        with self._order:
            if self.deliver(event) is not False:  # False: the view could not take it
                self._sent += 1
            if self._follower is not None:
                self._follower(event)

    # -- on the view's thread -----------------------------------------------------------------

    def _launched(self, launched: Launched) -> None:
        run = launched.run
        self._checking = False
        self.outcome = None
        self.daemons = {}
        self.acceptance, self.throughput = AcceptanceFigures(), ThroughputFigures()
        self.output = ""
        self.view.show_figures(self.acceptance, self.throughput)
        self.view.begin_output(run.prompt)
        self._prompts, self._next_prompt = (run.workload if run.workload.several else None), None
        self.workload = None if self._prompts is None else WorkloadProgress.starting(run.workload)
        self.view.show_workload(self.workload)
        self.view.show_running(True)
        where = f"target on {', '.join(run.placement.target)}, draft on {run.placement.draft}"
        self.view.add_log(f"launched {run.target.name} + {run.draft.name} ({run.mode}; {where})")
        self.view.show_status(f"starting run {launched.run_id}")

    def _watching(self, header: RunHeader) -> None:
        self.outcome = None
        self.daemons = {}
        self.acceptance, self.throughput = AcceptanceFigures(), ThroughputFigures()
        self.output = ""
        self.view.show_figures(self.acceptance, self.throughput)
        self.view.begin_output(str(header.options.get("prompt", "")))
        self.view.show_running(True)
        placement = header.placement
        where = f"target on {', '.join(placement.get('target') or [])}, draft on "
        where += str(placement.get("draft"))
        self.view.add_log(
            f"watching run {header.run_id} of pid {header.pid}, read-only: "
            f"{header.target_model} + {header.draft_model} ({header.mode}; {where})"
        )
        self.view.show_status(f"watching run {header.run_id}")

    def _step(self, event: ev.StepEvent) -> None:
        step = event.step
        self.acceptance = self.acceptance.after_step(
            step.committed,
            step.k or step.drafted,
            event.mean_acceptance_length,
            event.acceptance_rate,
            tuple(event.per_position_acceptance),
        )
        self.throughput = self.throughput.after_step(
            step.committed, step.draft_s, step.verify_s, step.transport_s, event.decode_tokens_per_s
        )
        if self._next_prompt is not None:  # one prompt's text at a time, however long the run
            self.output, prompt, self._next_prompt = "", self._next_prompt, None
            self.view.begin_output(prompt)
        self.output += event.text
        self.view.step_figures(self.acceptance, self.throughput)
        self.view.append_output(event.text)

    def _prompt_done(self, event: ev.PromptEvent) -> None:
        """A workload's prompt finished: the gauge moves on; the next prompt's first step
        starts the output afresh (the last one's stays once the run ends)."""
        self.workload = WorkloadProgress.of(event)
        self.view.show_workload(self.workload)
        self.view.add_log(self.workload.line(event.result))
        self._next_prompt = (
            "" if self._prompts is None else self._prompts.prompt_at(event.index + 1)[1]
        )

    def _done(self, result: dict) -> None:
        baseline = (result.get("baseline") or {}).get("decode_tokens_per_s")
        mean = result.get("decode_tokens_per_s", self.throughput.mean)
        self.throughput = replace(self.throughput, mean=mean, baseline=baseline)
        self.view.show_figures(self.acceptance, self.throughput)
        if result.get("output_text") is not None:  # the record's text, should a piece be missing
            self.output = result["output_text"]
            self.view.finish_output(self.output)
        summary = done_summary(result)
        self.view.add_log(summary)
        paths = decode_paths_text(result)
        if paths is not None:
            self.view.add_log(paths)
        self.view.notify(summary.removeprefix("done: "), title="run done")

    def _run_over(self, state: str) -> None:
        if self.handle is None:  # already ended (its last event after `notice_end`)
            return
        if self.watched and state in RUN_OVER:
            text = f"the watched run {self.handle.run_id} has ended: {state}"
            self.view.add_log(text, "warning" if state == "failed" else "info")
            self.view.notify(text, title="run over")
        self.handle = None
        self.outcome = state if state in RUN_OVER else self.outcome
        self.daemons = {}
        self.throughput = replace(self.throughput, now=None)  # no step goes on: no rate "now"
        self.view.show_running(False)
        self.view.show_status(state)
        self.view.show_daemons({})
        self.view.show_figures(self.acceptance, self.throughput)
