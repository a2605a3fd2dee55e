"""daemon_launch: the whole launch of a placed role, and a supervisor that runs it as it is."""

import dataclasses
import json
import os
import sys
import threading
from pathlib import Path

import pytest

from backends.base import Device
from ipc.launch import DaemonLaunch, LaunchSite, PlacedRole, daemon_launch
from ipc.supervisor import Supervisor

H100_0 = Device("cuda:0", "cuda", "H100", index=0, uuid="GPU-aaaa", visible_id="GPU-aaaa")
H100_2 = Device("cuda:2", "cuda", "H100", index=2, uuid="GPU-cccc", visible_id="GPU-cccc")
MI300_1 = Device("hip:1", "hip", "MI300X", index=1, uuid="a1ff-1", visible_id="GPU-4b2c8e0d1a7f")
CPU = Device("cpu", "cpu", "EPYC")
SIM = Device("sim-cuda:0", "cuda", "Simulated NVIDIA H100", index=0, simulated=True)
PROJECT_ROOT = Path(__file__).resolve().parents[2]
PYTHONS = {"cuda": "/opt/cuda-py/bin/python", "hip": "/opt/rocm-py/bin/python"}


@pytest.fixture
def site(tmp_path):
    return LaunchSite(tmp_path / "run", tmp_path / "logs", heartbeat_s=0.25)


def launch_of(placed: PlacedRole, site: LaunchSite, **kwargs) -> DaemonLaunch:
    return daemon_launch(placed, site, run_id="r1", backend_python=PYTHONS, **kwargs)


def test_a_cuda_target_sees_its_gpus_by_uuid_in_pci_order(site, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")  # the parent's own choice is not inherited
    launch = launch_of(PlacedRole("target", "/models/t", (H100_2, H100_0)), site)
    assert launch.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert launch.env["CUDA_VISIBLE_DEVICES"] == "GPU-cccc,GPU-aaaa"
    assert launch.spec.device_ids == ("cuda:2", "cuda:0")
    assert launch.spec.torch_devices == ("cuda:0", "cuda:1")
    assert launch.spec.backend == "cuda" and not launch.spec.simulated


def test_a_cpu_daemon_sees_no_gpu_of_any_vendor(site, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "0")
    launch = launch_of(PlacedRole("draft", "/models/d", (CPU,)), site)
    visible = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")
    assert {name: launch.env[name] for name in visible} == dict.fromkeys(visible, "")
    assert launch.spec.torch_devices == ("cpu",)


def test_the_environment_carries_the_parents_and_finds_specdeck(site, monkeypatch):
    monkeypatch.setenv("SPECDECK_SOMETHING", "kept")
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    launch = launch_of(PlacedRole("draft", "/models/d", (CPU,)), site)
    assert launch.env["SPECDECK_SOMETHING"] == "kept"
    assert launch.env["PYTHONPATH"] == os.pathsep.join([str(PROJECT_ROOT), "/elsewhere"])
    assert launch.env["PYTHONUNBUFFERED"] == "1"


def test_endpoints_and_the_spec_are_complete(site):
    draft = launch_of(PlacedRole("draft", "/models/d", (CPU,), trust_remote_code=True), site)
    target = launch_of(
        PlacedRole("target", "/models/t", (H100_0,)),
        site,
        draft_endpoint=draft.spec.control_endpoint,
        config_path="/home/me/specdeck.toml",
    )
    assert draft.spec.control_endpoint == f"ipc://{site.run_dir}/draft-control"
    assert target.spec.control_endpoint == f"ipc://{site.run_dir}/target-control"
    assert {draft.spec.telemetry_endpoint, target.spec.telemetry_endpoint} == {
        f"ipc://{site.run_dir}/telemetry"
    }
    assert target.spec.draft_endpoint == draft.spec.control_endpoint
    assert draft.spec.draft_endpoint == "" and not draft.spec.draft_model
    assert draft.spec.trust_remote_code and not target.spec.trust_remote_code
    for launch in (draft, target):
        assert launch.spec.parent_pid == os.getpid() and launch.spec.run_id == "r1"
        assert launch.spec.heartbeat_s == 0.25
        assert launch.spec.pdeathsig  # built on the main thread, which starts it
    assert target.spec.config_path == "/home/me/specdeck.toml"
    assert target.spec_path == site.run_dir / "target.json"
    assert target.log_path == site.log_dir / "target.log" and target.cwd == site.run_dir
    spec_file = str(site.run_dir / "target.json")
    assert target.argv[1:] == ("-m", "app.cli", "daemon", "--role", "target", "--spec", spec_file)


def test_the_interpreter_is_the_backends_configured_python(site):
    hip = launch_of(PlacedRole("target", "/models/t", (MI300_1,)), site)
    assert hip.python == hip.argv[0] == "/opt/rocm-py/bin/python"
    assert hip.env["ROCR_VISIBLE_DEVICES"] == "GPU-4b2c8e0d1a7f"
    cuda = launch_of(PlacedRole("target", "/models/t", (H100_0,)), site)
    assert cuda.python == "/opt/cuda-py/bin/python"
    # simulated GPUs run on the CPU, whose interpreter is specdeck's own unless configured
    assert launch_of(PlacedRole("draft", "/models/d", (SIM,)), site).python == sys.executable
    cpu_python = daemon_launch(
        PlacedRole("draft", "/models/d", (SIM,)),
        site,
        run_id="r1",
        backend_python={**PYTHONS, "cpu": "/opt/cpu-py/bin/python"},
    )
    assert cpu_python.python == "/opt/cpu-py/bin/python"
    assert cpu_python.spec.simulated and cpu_python.spec.torch_devices == ("cpu",)


def test_an_in_process_draft_gets_the_torch_name_of_its_target_device(site, tmp_path):
    model = tmp_path / "draft-model"
    model.mkdir()
    target = launch_of(
        PlacedRole("target", "/models/t", (H100_2, H100_0)),
        site,
        local_draft=PlacedRole("draft", str(model), (H100_0,), trust_remote_code=True),
    )
    assert target.spec.draft_torch_devices == ("cuda:1",)  # cuda:0 is the second visible GPU
    assert target.spec.draft_model == str(model.resolve())
    assert target.spec.draft_trust_remote_code and target.spec.draft_endpoint == ""


def test_a_relative_model_folder_is_made_absolute_for_the_run_dir(site, tmp_path, monkeypatch):
    (tmp_path / "m").mkdir()
    monkeypatch.chdir(tmp_path)
    launch = launch_of(PlacedRole("draft", "m", (CPU,)), site)
    assert launch.spec.model == str(tmp_path / "m")


@pytest.mark.parametrize(
    ("placed", "extra", "problem"),
    [
        (PlacedRole("target", "t", (H100_0, MI300_1)), {}, "mixed backends"),
        (
            PlacedRole("target", "t", (H100_0,)),
            {"local_draft": PlacedRole("draft", "d", (CPU,))},
            "one of the target's devices",
        ),
        (
            PlacedRole("target", "t", (H100_0,)),
            {"local_draft": PlacedRole("draft", "d", (H100_0,)), "draft_endpoint": "ipc://x"},
            "not both",
        ),
    ],
)
def test_a_launch_that_cannot_work_is_refused(site, placed, extra, problem):
    with pytest.raises(ValueError, match=problem):
        launch_of(placed, site, **extra)


def test_the_supervisor_runs_a_launch_as_it_is(tmp_path):
    sup = Supervisor(log_dir=tmp_path)
    try:
        launch = daemon_launch(
            PlacedRole("draft", "/models/d", (CPU,)), sup.site, run_id="r1", backend_python={}
        )
        shows = "import json, os, sys; print(json.dumps([os.getcwd(), os.environ['PYTHONPATH']]))"
        launch = dataclasses.replace(launch, argv=(sys.executable, "-c", shows))
        daemon = sup.start(launch)
        assert daemon.popen.wait(60) == 0
        cwd, pythonpath = json.loads(launch.log_path.read_text())
        assert cwd == str(sup.run_dir) and pythonpath == launch.env["PYTHONPATH"]
        assert json.loads(launch.spec_path.read_text())["telemetry_endpoint"] == (
            sup.telemetry_endpoint
        )
        assert daemon.spec == launch.spec and sup.daemons["draft"] is daemon
    finally:
        sup.stop()


def test_the_supervisor_refuses_a_launch_built_for_another_or_on_another_thread():
    first, second = Supervisor(), Supervisor()
    try:
        placed = PlacedRole("draft", "/models/d", (CPU,))
        theirs = daemon_launch(placed, first.site, run_id="r1", backend_python={})
        with pytest.raises(ValueError, match="another supervisor"):
            second.start(theirs)
        refused: list[Exception] = []

        def start_off_the_main_thread() -> None:
            try:
                first.start(theirs)  # built on the main thread: its child dies with a worker
            except ValueError as exc:
                refused.append(exc)

        worker = threading.Thread(target=start_off_the_main_thread)
        worker.start()
        worker.join()
        assert "another thread" in str(refused[0])
        assert not first.daemons and not second.daemons
    finally:
        first.stop()
        second.stop()


def test_a_launch_built_on_a_worker_thread_asks_for_no_parent_death_signal(site):
    built: list[DaemonLaunch] = []
    placed = PlacedRole("draft", "/models/d", (CPU,))
    worker = threading.Thread(target=lambda: built.append(launch_of(placed, site)))
    worker.start()
    worker.join()
    assert not built[0].spec.pdeathsig and launch_of(placed, site).spec.pdeathsig


def test_two_daemons_on_one_cpu_share_its_cores_unless_the_user_set_threads(
    tiny_pair, site, monkeypatch
):
    from backends.discovery import discover
    from ipc.run_spec import RunSpec, check_run

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    models = {"target_model": str(tiny_pair[0]), "draft_model": str(tiny_pair[1])}
    split = check_run(RunSpec(**models, target=("cpu",), draft="cpu", mode="split"), discover())
    for role in ("target", "draft"):
        launch = launch_of(split.placed(role), site)
        assert launch.env["OMP_NUM_THREADS"] == launch.env["MKL_NUM_THREADS"] == "8"

    inprocess = check_run(RunSpec(**models, target=("cpu",), mode="inprocess"), discover())
    assert inprocess.placed("target").cpu_threads is None  # one daemon: the whole machine
    assert "OMP_NUM_THREADS" not in launch_of(inprocess.placed("target"), site).env

    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's own choice stands
    assert launch_of(split.placed("draft"), site).env["OMP_NUM_THREADS"] == "3"


def test_simulated_cards_share_the_cpu_they_run_on(tiny_pair, site, monkeypatch):
    from backends.discovery import discover
    from ipc.run_spec import RunSpec, check_run

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    spec = RunSpec(
        target_model=str(tiny_pair[0]), draft_model=str(tiny_pair[1]),
        target=("sim-cuda:0",), draft="sim-cuda:1", mode="split",
    )  # fmt: skip
    split = check_run(spec, discover("cuda:2"))
    assert [split.placed(role).cpu_threads for role in ("target", "draft")] == [2, 2]
