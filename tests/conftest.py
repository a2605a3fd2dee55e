"""Shared test setup: every test gets private config and data folders."""

import shutil
import signal

import pytest


def pytest_configure(config):
    """Ctrl+C reaches the processes the tests start, as from a terminal. A shell starts a
    background job with SIGINT ignored (POSIX, without job control), and an ignored signal
    stays ignored across exec: specdeck under such a suite would never see the SIGINT a test
    sends it (seen: `.ci/run` started with `&` from a script)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _has_nvidia_gpu() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        pynvml.nvmlShutdown()
        return count > 0
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_nvidia_gpu() and shutil.which("nvidia-smi"):
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU with NVML and nvidia-smi")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _private_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECDECK_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SPECDECK_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory):
    """(target_dir, draft_dir): a small random Llama pair that shares a tokenizer."""
    from tests.tiny_models import make_pair

    return make_pair(tmp_path_factory.mktemp("tiny-pair"))


@pytest.fixture(scope="session")
def tiny_twin_pair(tmp_path_factory):
    """(target_dir, draft_dir) where the draft has exactly the target's weights."""
    from tests.tiny_models import make_pair

    return make_pair(tmp_path_factory.mktemp("tiny-twin"), same_weights=True)
