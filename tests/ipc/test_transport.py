"""tcp between a run's processes: CURVE keys per run, only the run's keys admitted, the same
protocol, tokens and liveness as over ipc."""

import json
import os
import signal
import time
from dataclasses import asdict, replace

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from backends.base import Device
from backends.discovery import discover
from ipc import events as ev
from ipc.launch import PlacedRole, daemon_launch
from ipc.runner import start_run
from ipc.supervisor import Supervisor
from ipc.transport import Keypair, PartyKeys, RunKeys, Transport, read_keys
from tests.ipc.test_liveness import LIVENESS_S, start_long_run, wait_for_step
from tests.ipc.test_runner import PROMPT, Quiet, alive, request

CPU = Device("cpu", "cpu", "host CPU")
TCP = Transport("tcp", "127.0.0.1")
REFUSED = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH,  # CURVE client whose key the ZAP handler does not know
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,  # no CURVE at all: the mechanisms differ
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,  # CURVE towards a server key that is not the server's
}


def tcp_request(tiny_pair, **kwargs):
    run = request(tiny_pair, **kwargs)
    return replace(run, spec=replace(run.spec, transport="tcp"))


# -- keys and launches (no processes) ------------------------------------------------------


def test_party_keys_travel_as_one_line_and_garbage_is_refused():
    keys = RunKeys.new().party("draft")
    back = PartyKeys.from_line(keys.to_line())
    assert back == keys and back.own.secret == keys.own.secret
    assert keys.own.public in keys.admitted and len(keys.admitted) == 3
    assert keys.own.secret.decode() not in repr(keys)
    for bad in (b"{}\n", b"not json\n", keys.to_line().replace(b'"secret": "', b'"secret": "~')):
        with pytest.raises(ValueError, match="unreadable CURVE keys"):
            PartyKeys.from_line(bad)
    with pytest.raises(ValueError, match="no CURVE keys on stdin"):
        read_keys(open(os.devnull, "rb"))  # noqa: SIM115


def test_tcp_binds_a_concrete_address():
    for wildcard in ("*", "0.0.0.0", "::", ""):
        with pytest.raises(ValueError, match="an address peers can reach"):
            Transport("tcp", wildcard)
    with pytest.raises(ValueError, match="unknown transport"):
        Transport("udp")


def test_a_tcp_launch_holds_its_secret_key_outside_the_spec_argv_and_environment(tmp_path):
    sup = Supervisor(log_dir=tmp_path, transport=TCP)
    try:
        assert sup.telemetry_endpoint.startswith("tcp://127.0.0.1:")
        assert not sup.telemetry_endpoint.endswith(":0")
        placed = PlacedRole("draft", "/models/d", (CPU,))
        launch = daemon_launch(placed, sup.site, run_id="r1", backend_python={})
        assert launch.spec.control_endpoint == "tcp://127.0.0.1:0"  # the daemon picks the port
        assert launch.spec.telemetry_endpoint == sup.telemetry_endpoint
        assert launch.spec.transport == "tcp" and launch.keys.party == "draft"
        secrets = [pair.secret.decode() for pair in sup.keys.pairs.values()]
        visible = [
            json.dumps(asdict(launch.spec)),
            *launch.argv,
            *launch.env.values(),
            repr(launch),
        ]
        assert not any(secret in text for secret in secrets for text in visible)
        elsewhere = daemon_launch(placed, sup.site, run_id="r1", backend_python={}, bind_host="::1")
        assert elsewhere.spec.control_endpoint == "tcp://[::1]:0"
    finally:
        sup.stop()
    ipc = Supervisor(log_dir=tmp_path)
    try:
        launch = daemon_launch(placed, ipc.site, run_id="r1", backend_python={})
        assert launch.keys is None and launch.spec.control_endpoint.startswith("ipc://")
    finally:
        ipc.stop()


def test_an_unknown_transport_is_one_line_and_exit_2(tiny_pair, capsys):
    from app.cli import main

    models = ["--target-model", str(tiny_pair[0]), "--draft-model", str(tiny_pair[1])]
    assert main(["run", *models, "--transport", "udp"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "specdeck: unknown transport 'udp' (ipc or tcp)\n"


# -- live daemons ---------------------------------------------------------------------------


def test_a_split_run_over_tcp_gives_the_in_process_tokens(tiny_pair, tmp_path):
    from engine.catalog import resolve_model
    from engine.loading import load_model
    from engine.local_drafter import LocalDrafter
    from engine.speculative import SpeculativeDecoder

    handle = start_run(
        tcp_request(tiny_pair), inventory=discover(), sampler=Quiet(), data_dir=tmp_path
    )
    result = handle.wait(120)
    assert handle.error is None and result is not None, handle.error

    target = load_model(resolve_model(str(tiny_pair[0])), ["cpu"])
    drafter = LocalDrafter(load_model(resolve_model(str(tiny_pair[1])), ["cpu"]))
    prompt = target.tokenizer(PROMPT)["input_ids"]
    want = SpeculativeDecoder(target, drafter, 4, 0.0, 0).generate(prompt, 40)
    assert result["output_token_ids"] == want.output_ids
    assert result["steps"] == want.stats.steps and result["transport_s"] > 0
    run = json.loads((tmp_path / "runs" / handle.run_id / "run.json").read_text())
    assert run["status"] == "done" and run["options"]["transport"] == "tcp"
    assert not any(alive(pid) for pid in handle.pids.values())


def refused(sock: zmq.Socket, timeout_s: float = 30.0) -> int:
    """The handshake failure an intruder's socket saw (the test fails if it got through)."""
    monitor = sock.get_monitor_socket()
    deadline = time.monotonic() + timeout_s
    try:
        while monitor.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            event = recv_monitor_message(monitor)["event"]
            assert event != zmq.EVENT_HANDSHAKE_SUCCEEDED, "an intruder got through"
            if event in REFUSED:
                return event
        raise AssertionError("the intruder's handshake neither failed nor succeeded")
    finally:
        sock.disable_monitor()
        monitor.close()


def intruders(endpoint: str, server_public: bytes, kind: int) -> list[zmq.Socket]:
    """Clients of `endpoint` without the run's keys: no CURVE, a random key that knows the
    server's public key, a random key that guesses it."""
    ctx = zmq.Context.instance()
    made = []
    for server in (None, server_public, Keypair.new().public):
        sock = ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if server is not None:
            mine = Keypair.new()
            sock.setsockopt(zmq.CURVE_SERVERKEY, server)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, mine.public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, mine.secret)
        made.append(sock)
    return made


def test_clients_without_the_runs_keys_get_nothing_and_the_run_goes_on(tiny_pair, tmp_path):
    from ipc import codec

    sup = Supervisor(log_dir=tmp_path, transport=TCP)
    socks = []
    try:
        draft = PlacedRole("draft", str(tiny_pair[1]), (CPU,))
        sup.start(daemon_launch(draft, sup.site, run_id="t", backend_python={}))
        draft_endpoint = sup.control_endpoint("draft")
        target = PlacedRole("target", str(tiny_pair[0]), (CPU,))
        launch = daemon_launch(
            target, sup.site, run_id="t", backend_python={}, draft_endpoint=draft_endpoint
        )
        sup.start(launch)
        target_endpoint = sup.control_endpoint("target")
        public = {name: pair.public for name, pair in sup.keys.pairs.items()}
        hello = codec.encode("hello", {"client": "intruder"}, id=1)
        forged = codec.encode("log", {"role": "draft", "level": "error", "text": "forged"})
        for endpoint, server, kind, frames in (
            (draft_endpoint, public["draft"], zmq.DEALER, hello),
            (target_endpoint, public["target"], zmq.DEALER, hello),
            (sup.telemetry_endpoint, public["supervisor"], zmq.PUB, forged),
        ):
            for sock in intruders(endpoint, server, kind):
                socks.append(sock)
                sock.connect(endpoint)
                sock.send_multipart(frames, zmq.NOBLOCK)  # queued for the handshake
                refused(sock)
        for role in ("draft", "target"):
            sup.request(role, "hello", {"client": "supervisor"})
        heard, welcomed = [], set()
        deadline = time.monotonic() + 120
        while len(welcomed) < 2 and time.monotonic() < deadline:
            for incoming in sup.poll(0.2):
                heard.append(incoming)
                if incoming.message is not None and incoming.message.type == "welcome":
                    welcomed.add(incoming.role)
            assert not sup.exited(), [d.log_tail(5) for d in sup.daemons.values()]
        assert welcomed == {"draft", "target"}
        options = {"prompt": PROMPT, "max_new_tokens": 12, "k": 4, "temperature": 0.0}
        sup.request("target", "start", {**options, "seed": 0, "baseline": False})
        done = None
        while done is None and time.monotonic() < deadline:
            for incoming in sup.poll(0.2):
                heard.append(incoming)
                if incoming.message is not None and incoming.message.type == "done":
                    done = incoming.message["result"]
        assert done is not None and done["new_tokens"] == 12
        assert not [i for i in heard if i.message is None]  # nothing unreadable, nothing forged
        assert not any(i.message.fields.get("text") == "forged" for i in heard)
        for sock in socks:
            if sock.type == zmq.DEALER:
                assert not sock.poll(0), "an intruder got a reply"
    finally:
        for sock in socks:
            sock.close()
        sup.stop()


def test_a_stopped_draft_daemon_over_tcp_ends_the_run_within_its_deadline(tiny_pair, tmp_path):
    seen = []
    handle = start_long_run(tiny_pair, tmp_path, seen, transport="tcp")
    wait_for_step(seen, handle)
    pid = handle.pids["draft"]
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        assert handle.wait(60) is None
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGCONT)
    silent = [e for e in seen if isinstance(e, ev.ErrorEvent)]
    assert handle.error.role == "draft", handle.error
    assert f"the draft daemon (pid {pid}) stopped answering" in handle.error.text
    # the deadline, a poll, then the shutdown of the others (0.5 s grace, 1 s to terminate)
    assert silent and time.monotonic() - stopped < LIVENESS_S + 5.0
    run = json.loads((tmp_path / "runs" / handle.run_id / "run.json").read_text())
    assert run["status"] == "failed" and "draft daemon" in run["error"]
    assert not any(alive(p) for p in handle.pids.values())
