"""The one entry point that launches a run through daemons (no torch here).

`specdeck run --mode split` and the dashboard call `start_run`; it returns at once, and a
background thread starts the daemons, drives the run, writes the run record and reports
what happens through `on_event`. A request with `prompts` is a session: the same daemons
decode each prompt in turn (`specdeck bench`), so the models load once.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import platformdirs

from engine.metrics import AcceptanceStats, PooledFigures, StepRecord, decode_tokens_per_s
from ipc import events as ev
from ipc.cluster_daemons import ClusterSites, host_of, lost_text
from ipc.launch import DaemonLaunch, PlacedRole, daemon_launch
from ipc.records import RecordError, RunRecorder
from ipc.run_spec import CheckedRun
from ipc.supervisor import HEARTBEAT_S, LIVENESS_S, Daemon, Incoming, Supervisor, exit_text
from ipc.transport import IPC, Transport
from ipc.watch import RunHeader, WatchError, WatchPublisher

if TYPE_CHECKING:
    from backends.discovery import Inventory
    from backends.sampler import DeviceSampler, SampleFeed

READY_TIMEOUT_S = 900.0  # loading a large model from a cold disk takes minutes
POLL_S = 0.1
START_ERROR_EXIT_S = 10.0  # a daemon that said why it cannot start exits at once, even when loaded


def default_data_dir() -> Path:
    """app.config.data_dir()'s rule, for callers that pass no data_dir."""
    env = os.environ.get("SPECDECK_DATA_DIR")
    return Path(env) if env else Path(platformdirs.user_data_dir("specdeck"))


class RunFailed(RuntimeError):
    """The run ended with an error; the message is one line naming the role at fault."""


class RunHandle:
    """A run going on in the background."""

    def __init__(self, run_id: str, record_dir: Path) -> None:
        self.run_id = run_id
        self.record_dir = record_dir
        self.error: ev.ErrorEvent | None = None
        self.result: dict | None = None
        self.state = "starting"
        self._pids: dict[str, int] = {}
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def pids(self) -> dict[str, int]:
        """role -> pid of each daemon started so far."""
        return dict(self._pids)

    def stop(self) -> None:
        """Ask the run to stop; daemons are shut down and the record is kept."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> dict | None:
        """The `specdeck run --json` document, or None if the run failed, was stopped early
        without a result, or is still going after `timeout`."""
        self._done.wait(timeout)
        return self.result

    def wait_to_end(self) -> dict | None:
        """`wait()` for the run's end; Ctrl+C (or SIGTERM, SIGHUP) stops it first: daemons
        down, record kept, and the interrupt goes on with the record's folder as `record_dir`."""
        try:
            return self.wait()
        except KeyboardInterrupt as interrupt:
            self.stop()
            self.wait()
            interrupt.record_dir = self.record_dir
            raise

    @property
    def finished(self) -> bool:
        return self._done.is_set()


def start_run(
    request: CheckedRun,
    *,
    inventory: Inventory,
    sampler: SampleFeed | None = None,
    on_event: Callable[[ev.RunEvent], None] | None = None,
    data_dir: str | os.PathLike | None = None,
    liveness_s: float = LIVENESS_S,
    transport: Transport | None = None,
) -> RunHandle:
    """Launch the daemons of one run and return at once; the run goes on in a thread.

    A ready daemon that says nothing for `liveness_s` ends the run as failed. The daemons'
    sockets are `transport`'s (default: the request's, tcp on 127.0.0.1).
    """
    placement = request.placement
    recorder = RunRecorder(  # it picks the run id: the one whose folder it could claim
        data_dir or default_data_dir(),
        target_model=request.target_name or request.target_model,
        draft_model=request.draft_name or request.draft_model,
        placement={"target": list(placement.target), "draft": placement.draft},
        mode=request.mode,
        options={
            "k": request.k,
            "temperature": request.temperature,
            "seed": request.seed,
            "max_new_tokens": request.max_new_tokens,
            "baseline": request.baseline,
            "trust_remote_code": request.trust_remote_code,
            "transport": request.transport,
            **(_workload_options(request) if request.session else {"prompt": request.prompt}),
        },
    )
    run_id = recorder.run_id
    handle = RunHandle(run_id, recorder.folder)
    run = _Run(
        request,
        handle,
        recorder,
        inventory,
        dict(request.backend_python),
        sampler,
        on_event or (lambda event: None),
        request.config_path,
        liveness_s,
        transport or Transport(request.transport),
    )
    handle._thread = threading.Thread(target=run.main, name=f"run-{run_id}", daemon=True)
    handle._thread.start()
    return handle


def _workload_options(request: CheckedRun) -> dict:
    """What a session's record says of its workload: its prompts, rounds and time bound."""
    work = request.workload
    return {
        "prompts": len(work.prompts),
        "prompt_source": work.source,
        "repeat": work.repeat,
        "duration_s": work.duration_s,
        "warmup_tokens": request.warmup_tokens,
    }


class _Run:
    """The background thread of one run: supervisor, events, record."""

    def __init__(
        self,
        request: CheckedRun,
        handle: RunHandle,
        recorder: RunRecorder,
        inventory: Inventory,
        backend_python: dict[str, str],
        sampler: SampleFeed | None,
        on_event: Callable[[ev.RunEvent], None],
        config_path: str,
        liveness_s: float,
        transport: Transport = IPC,
    ) -> None:
        self.request = request
        self.transport = transport
        self.handle = handle
        self.recorder = recorder
        self.inventory = inventory
        self.backend_python = backend_python
        self.sampler = sampler
        self.on_event = on_event
        self.config_path = config_path
        self.liveness_s = liveness_s
        self.stats = AcceptanceStats()
        self.started = False
        self.stop_sent = False
        self.result: dict | None = None
        self.failure: ev.ErrorEvent | None = None
        self.warming = False  # the warm-up generation's events are not the run's
        self.warmup: dict = {}  # its document: its capture seconds join the first prompt's
        # a session's prompts: running totals only, each prompt's document streamed to the
        # record (prompts.jsonl), so a run of hours holds as much as a run of one prompt
        self.pool = PooledFigures()
        self.workload_start: float | None = None  # monotonic time the first prompt started
        self.decode_paths: dict = {}  # the daemons' decode paths, as the first prompt said
        self.capture_s = 0.0  # seconds capturing CUDA graphs, over the prompts
        self.watch: WatchPublisher | None = None  # the run's watch endpoint, once open
        self.sites: ClusterSites | None = None  # the nodes of roles on a cluster's hosts

    def emit(self, event: ev.RunEvent) -> None:
        with contextlib.suppress(Exception):  # a watcher's bug must not kill the run
            self.on_event(event)
        if self.watch is not None:
            self.watch.publish(event)  # never blocks: readers in other processes

    def main(self) -> None:
        own_sampler, unsubscribe = self._start_sampling()
        supervisor = None
        try:
            self.sites = ClusterSites.of(self.request, self.inventory)
            if self.sites is not None:  # daemons on other hosts: tcp with CURVE
                self.transport = self.sites.transport()
            supervisor = Supervisor(
                log_dir=self.recorder.folder,
                heartbeat_s=min(HEARTBEAT_S, self.liveness_s / 6),
                liveness_s=self.liveness_s,
                transport=self.transport,
            )
            self._open_watch(supervisor.run_dir)
            self._launch(supervisor)
            self._drive(supervisor)
        except RecordError as exc:  # a full disk: the record says what it can, the run ends
            self.failure = self.failure or ev.ErrorEvent("run", str(exc))
        except Exception as exc:  # a bug or an OS error; still stop and record
            self.failure = self.failure or ev.ErrorEvent("run", f"{type(exc).__name__}: {exc}")
        finally:
            self._set_phase("idle")
            if supervisor is not None:
                supervisor.stop(grace_s=3.0 if self.failure is None else 0.5)
            if self.sites is not None:
                self.sites.close()
            if unsubscribe is not None:
                with contextlib.suppress(Exception):
                    unsubscribe()
            if own_sampler is not None:
                own_sampler.stop()
            self._finish()

    # -- launching -----------------------------------------------------------------------

    def _launch(self, supervisor: Supervisor) -> None:
        """Start the draft daemon (split) and the target daemon, each from its whole launch."""
        req = self.request
        target, draft = req.placed("target"), req.placed("draft")
        if self.sites is not None:
            try:  # each remote role's actor on its node first, its GPUs counted by Ray
                self.sites.place_all([target, draft] if req.mode == "split" else [target])
            except ValueError as exc:
                self.failure = ev.ErrorEvent("run", str(exc))
                return
        if req.mode == "split":
            self._start(supervisor, self._launch_of(supervisor, draft))
            try:  # over tcp the draft's port is known once it has bound
                endpoint = supervisor.control_endpoint("draft")
            except RuntimeError as exc:
                self.failure = ev.ErrorEvent("draft", str(exc))
                return
            self._start(supervisor, self._launch_of(supervisor, target, draft_endpoint=endpoint))
        else:
            self._start(supervisor, self._launch_of(supervisor, target, local_draft=draft))

    def _launch_of(
        self,
        supervisor: Supervisor,
        placed: PlacedRole,
        local_draft: PlacedRole | None = None,
        draft_endpoint: str = "",
    ) -> DaemonLaunch:
        """The whole launch of one role of this run under this run's supervisor."""
        return daemon_launch(
            placed,
            supervisor.site,
            run_id=self.handle.run_id,
            backend_python=self.backend_python,
            config_path=self.config_path,
            local_draft=local_draft,
            draft_endpoint=draft_endpoint,
            bind_host=self.sites.bind_host(placed.role) if self.sites is not None else None,
        )

    def _start(self, supervisor: Supervisor, launch: DaemonLaunch) -> None:
        remote = self.sites.spawner(launch.role) if self.sites is not None else None
        daemon = supervisor.start(launch) if remote is None else supervisor.start(launch, remote)
        if remote is not None:  # its host is judged by what its daemon says too
            daemon.popen.heard = lambda: daemon.last_seen
        self.handle._pids[launch.role] = daemon.pid
        supervisor.request(launch.role, "hello", {"client": "supervisor"})
        self.emit(ev.DaemonEvent(launch.role, daemon.pid, launch.spec.device_ids))
        self.emit(ev.StatusEvent(launch.role, "starting", f"pid {daemon.pid}"))

    # -- the run -------------------------------------------------------------------------

    def _drive(self, supervisor: Supervisor) -> None:
        launched = time.monotonic()
        self._set_phase("load")
        while self.result is None and self.failure is None:
            for incoming in supervisor.poll(POLL_S):
                self._handle(supervisor, incoming)
            for daemon, status in supervisor.exited():
                self._died(daemon, status)
            if self.failure is not None or self.result is not None:
                break
            if self.handle._stop.is_set():
                if not self.started:
                    return
                if not self.stop_sent:
                    supervisor.request("target", "stop")
                    self.stop_sent = True
            for daemon, deadline in supervisor.silent():
                self.failure = ev.ErrorEvent(
                    daemon.role,
                    f"the {daemon.role} daemon (pid {daemon.pid}){host_of(daemon.popen)} "
                    "stopped answering: "
                    f"nothing heard from it for {deadline:g} s",
                )
            if not self.started and time.monotonic() - launched > READY_TIMEOUT_S:
                self.failure = ev.ErrorEvent(
                    "run", f"the daemons were not ready within {READY_TIMEOUT_S:g} s"
                )

    def _handle(self, supervisor: Supervisor, incoming: Incoming) -> None:
        msg, role = incoming.message, incoming.role
        if msg is None:
            self.emit(ev.LogEvent("warning", f"unreadable message: {incoming.problem}", role))
            return
        kind = msg.type
        if incoming.channel == "control":
            if kind == "welcome":
                supervisor.daemons[role].welcome = dict(msg.fields)
                if all(d.welcome for d in supervisor.daemons.values()) and not self.started:
                    self._begin(supervisor)
            elif kind == "error":
                self.failure = ev.ErrorEvent(role, f"{role} daemon: {msg['text']}")
            return
        if self.warming and kind in ("step", "token", "status"):
            if kind == "status" and msg["state"] == "capture":
                # capturing graphs happens in the warm-up when there is one: shown as such
                self.emit(ev.StatusEvent(role, "capture", f"warm-up: {msg['text']}"))
            return  # the warm-up generation is neither shown nor recorded
        if kind == "status":
            self.emit(ev.StatusEvent(role, msg["state"], msg["text"]))
            if role == "target" and msg["state"] in ("prefill", "decode"):
                self._set_phase(msg["state"])
        elif kind == "step":
            self._step(msg)
        elif kind == "token":
            new, decode_s = msg["new_tokens"], msg["decode_s"]
            self.emit(
                ev.TokenEvent(
                    msg["phase"],
                    tuple(msg.arrays["token_ids"].tolist()),
                    msg["text"],
                    new,
                    decode_tokens_per_s(new, decode_s),
                )
            )
        elif kind == "log":
            self.emit(ev.LogEvent(msg["level"], msg["text"], role))
        elif kind == "error":
            # a daemon that cannot start says why, then exits; its exit status comes next
            daemon = supervisor.daemons.get(role)
            starting = msg["code"] == "start" and daemon is not None
            status = _wait_exit(daemon, START_ERROR_EXIT_S) if starting else None
            if daemon is not None and status is not None:
                daemon.expected_exit = True
            self.failure = ev.ErrorEvent(role, f"{role} daemon: {msg['text']}", status)
        elif kind == "done":
            self._generation_done(supervisor, msg["result"])

    def _begin(self, supervisor: Supervisor) -> None:
        req = self.request
        self.started = True
        if req.warmup_tokens > 0:
            self.warming = True
            first = req.prompt_list[0]
            self._send_start(supervisor, first, min(req.warmup_tokens, req.max_new_tokens))
        else:
            self._start_workload(supervisor)

    def _start_workload(self, supervisor: Supervisor) -> None:
        """The first recorded prompt: a time bound counts from here (loading excluded)."""
        self.workload_start = time.monotonic()
        self._send_start(supervisor, self.request.prompt_list[0], self.request.max_new_tokens)

    def _send_start(self, supervisor: Supervisor, prompt: str, max_new_tokens: int) -> None:
        req = self.request
        supervisor.request(
            "target",
            "start",
            {
                "prompt": prompt,
                "max_new_tokens": max_new_tokens,
                "k": req.k,
                "temperature": float(req.temperature),
                "seed": req.seed,
                "baseline": req.baseline,
                **({"decoder": req.decoder} if req.decoder != "speculative" else {}),
            },
        )

    def _generation_done(self, supervisor: Supervisor, generation: dict) -> None:
        """One prompt finished: start the next one, or end the run with its document."""
        req, work = self.request, self.request.workload
        if self.warming:
            self.warming = False
            self.warmup = generation
            self._start_workload(supervisor)
            return
        generation = _with_capture(generation, self.warmup)
        self.warmup = {}
        if not req.session:
            self.result = self._document(generation)
            return
        index = self.pool.prompts
        self.pool.add(generation)
        self.decode_paths = self.decode_paths or generation.get("decode_paths") or {}
        self.capture_s += generation.get("capture_s") or 0.0
        self.recorder.prompt(self._prompt_row(index, generation))
        elapsed = time.monotonic() - (self.workload_start or time.monotonic())
        fraction, eta = work.progress(index + 1, elapsed)
        self.emit(ev.PromptEvent(index, work.total, generation, elapsed, fraction, eta))
        stopped = generation.get("stop_reason") == "stopped" or self.handle._stop.is_set()
        if stopped:
            self.result = self._session_document("stopped")
        elif work.more(index + 1, elapsed):
            self._send_start(supervisor, work.prompt_at(index + 1)[1], req.max_new_tokens)
        else:
            timed = work.total is None or index + 1 < work.total
            self.result = self._session_document("duration" if timed else "max_new_tokens")

    def _prompt_row(self, index: int, generation: dict) -> dict:
        """A prompt's row of prompts.jsonl: where it stands in the workload, then its
        generation document (its text only in the first round; later rounds name it)."""
        work = self.request.workload
        at, text = work.prompt_at(index)
        first_round = index < len(work.prompts)
        return {
            "index": index,
            "round": index // len(work.prompts),
            "prompt_index": at,
            "prompt_id": work.id_of(at),
            **({"prompt": text} if first_round else {}),
            **generation,
        }

    def _step(self, msg: Any) -> None:
        f = msg.fields
        step = StepRecord(
            index=f["index"],
            drafted=f["drafted"],
            accepted=f["accepted"],
            committed=f["committed"],
            draft_s=f["draft_s"],
            verify_s=f["verify_s"],
            transport_s=f["transport_s"],
            k=f["k"],
        )
        self.stats.add(step)
        self.recorder.step(step, self.stats.mean_acceptance_length)
        self.emit(
            ev.StepEvent(
                step=step,
                token_ids=tuple(msg.arrays["token_ids"].tolist()),
                text=f["text"],
                mean_acceptance_length=self.stats.mean_acceptance_length,
                acceptance_rate=self.stats.acceptance_rate,
                per_position_acceptance=tuple(self.stats.per_position_acceptance),
                decode_tokens_per_s=decode_tokens_per_s(f["new_tokens"], f["decode_s"]),
                new_tokens=f["new_tokens"],
            )
        )

    def _died(self, daemon: Daemon, status: int) -> None:
        said = daemon.error_text
        lost = lost_text(daemon.role, daemon.popen)
        if lost:
            text = lost
        elif said:
            text = f"{daemon.role} daemon: {said}"
        else:
            where = host_of(daemon.popen)
            text = f"the {daemon.role} daemon (pid {daemon.pid}){where} died: {exit_text(status)}"
            tail = daemon.log_tail()
            if tail and status > 0:
                text += f"; its last words: {tail}"
            text += self._configured_python(daemon)
        self.failure = self.failure or ev.ErrorEvent(daemon.role, text, status)

    def _configured_python(self, daemon: Daemon) -> str:
        """`; it ran [backends.X] python = P (config)` when the config chose the interpreter of
        a daemon that died before saying a word: then that interpreter is the likely cause."""
        backend = "cpu" if daemon.spec.simulated else daemon.spec.backend
        python = self.backend_python.get(backend)
        if python is None or daemon.welcome is not None:
            return ""
        return f"; it ran [backends.{backend}] python = {python!r} ({self.config_path or 'config'})"

    def _header(self) -> dict:
        """Models, placement and mode: what every document of this run starts with."""
        req = self.request
        return {
            "target_model": req.target_name or req.target_model,
            "draft_model": req.draft_name or req.draft_model,
            "placement": {"target": list(req.placement.target), "draft": req.placement.draft},
            "simulated_devices": req.simulated_devices,
            "mode": req.mode,
        }

    def _document(self, generation: dict) -> dict:
        return {**self._header(), **generation, "run_id": self.handle.run_id}

    def _session_document(self, stop_reason: str) -> dict:
        """The session's document: figures pooled over its prompts from the running totals
        (each prompt's own document is its row in the record's prompts.jsonl).

        `stop_reason`: `max_new_tokens` (every prompt done), `duration` (the time bound) or
        `stopped`."""
        req = self.request
        work = req.workload
        return {
            **self._header(),
            "k": req.k,
            "temperature": req.temperature,
            "seed": req.seed,
            **self.pool.figures(),
            "per_position_acceptance": self.stats.per_position_acceptance,
            "rounds": self.pool.prompts // len(work.prompts),
            "workload_s": time.monotonic() - (self.workload_start or time.monotonic()),
            "workload": {
                "prompts": len(work.prompts),
                "source": work.source,
                "repeat": work.repeat,
                "duration_s": work.duration_s,
            },
            **(
                {"decode_paths": self.decode_paths, "capture_s": self.capture_s}
                if self.decode_paths
                else {}
            ),
            "stop_reason": stop_reason,
            "run_id": self.handle.run_id,
        }

    # -- telemetry and the record --------------------------------------------------------

    def _start_sampling(self) -> tuple[DeviceSampler | None, Callable[[], None] | None]:
        """Subscribe the record to device samples; start a sampler if none was given."""
        own = None
        sampler = self.sampler
        if sampler is None:
            try:
                from backends.sampler import DeviceSampler

                sampler = own = DeviceSampler(self.inventory, interval_s=0.5)
                own.start()
            except Exception:
                return None, None  # telemetry is a nicety; the run goes on without it
        self.sampler = sampler
        wanted = {*self.request.placement.target, self.request.placement.draft, "cpu"}

        def record(sample: Any) -> None:
            if sample.device_id in wanted:
                self.recorder.sample(sample)
                if self.watch is not None:
                    self.watch.publish(sample)

        unsubscribe = sampler.subscribe(record)
        if not callable(unsubscribe):
            unsubscribe = getattr(sampler, "unsubscribe", None)
            unsubscribe = (lambda: sampler.unsubscribe(record)) if unsubscribe else None
        return own, unsubscribe

    def _open_watch(self, run_dir: Path) -> None:
        """Open the run's watch endpoint in its run dir (`ipc.watch`); a run goes on without."""
        from ipc.owners import process_identity

        try:
            owner, header = process_identity(), self._header()
            publisher = WatchPublisher(
                run_dir,
                RunHeader(
                    run_id=self.handle.run_id,
                    target_model=header["target_model"],
                    draft_model=header["draft_model"],
                    placement=header["placement"],
                    mode=header["mode"],
                    options=self.recorder.options,
                    record_dir=str(self.recorder.folder),
                    pid=owner["pid"],
                    host=owner["host"],
                    started=owner["started"],
                ),
            )
            publisher.start()
        except Exception as exc:  # WatchError, or a bug: either way the run goes on unwatched
            text = str(exc) if isinstance(exc, WatchError) else f"{type(exc).__name__}: {exc}"
            self.emit(ev.LogEvent("warning", f"{text}; the run cannot be watched", "run"))
            return
        self.watch = publisher

    def _set_phase(self, phase: str) -> None:
        if self.sampler is not None:
            with contextlib.suppress(Exception):
                self.sampler.phase = phase

    def _finish(self) -> None:
        """Close the record and tell the watchers; the handle ends whatever the disk says."""
        handle = self.handle
        try:
            self._close_record()
        except Exception as exc:  # a full disk, most likely: the old run.json stays valid
            text = str(exc) if isinstance(exc, RecordError) else f"{type(exc).__name__}: {exc}"
            self.failure, self.result = ev.ErrorEvent("run", text), None
        try:
            if self.failure is not None:
                handle.error, handle.state = self.failure, "failed"
                self.emit(self.failure)
                self.emit(ev.StatusEvent("run", "failed", self.failure.text))
            else:
                handle.result = self.result
                handle.state = "done" if self._completed else "stopped"
                if self.result is not None:
                    self.emit(ev.DoneEvent(self.result))
                self.emit(ev.StatusEvent("run", handle.state))
        finally:
            if self.watch is not None:  # its last events reach the readers before the end
                self.watch.close()
            handle._done.set()

    @property
    def _completed(self) -> bool:
        return self.result is not None and self.result.get("stop_reason") != "stopped"

    def _close_record(self) -> None:
        if self.failure is not None:
            self.recorder.fail(self.failure.text, self.result)
        elif self._completed:
            self.recorder.finish(self.result)
        else:
            self.recorder.stopped(self.result)


def _wait_exit(daemon: Daemon, timeout_s: float) -> int | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = daemon.popen.poll()
        if status is not None:
            return status
        time.sleep(0.02)
    return None


def _with_capture(generation: dict, earlier: dict) -> dict:
    """`generation` with the capture seconds of `earlier` (the warm-up's document) added to
    its own, in all and per role."""
    if not earlier.get("capture_s"):
        return generation
    before = earlier.get("decode_paths") or {}
    paths = {
        role: {
            **path,
            "capture_s": (path.get("capture_s") or 0.0)
            + ((before.get(role) or {}).get("capture_s") or 0.0),
        }
        for role, path in (generation.get("decode_paths") or {}).items()
    }
    return {
        **generation,
        "capture_s": (generation.get("capture_s") or 0.0) + earlier["capture_s"],
        **({"decode_paths": paths} if paths else {}),
    }
