"""The placement board: what may go where, and why not."""

import pytest

from app.board import Board, free_memory
from backends.base import Sample
from backends.placement import PlacementError
from tests.app.dashboard_fakes import DEVICES, GIB, USED


def board(target_gib=13.5, draft_gib=0.3) -> Board:
    free = {d.id: d.memory_total_bytes - USED[d.id] for d in DEVICES}
    return (
        Board.of(DEVICES).with_models(int(target_gib * GIB), int(draft_gib * GIB)).with_free(free)
    )


def test_target_and_draft_placed_on_one_gpu():
    b = board().place("target", "sim-cuda:0").place("draft", "sim-cuda:0")
    assert b.roles_on("sim-cuda:0") == ("target", "draft")
    assert b.placement().mode == "inprocess"


def test_target_splits_across_gpus_of_one_backend():
    b = board(target_gib=1).place("target", "sim-cuda:0").place("target", "sim-cuda:1")
    assert b.target == ("sim-cuda:0", "sim-cuda:1")


def test_target_across_vendors_is_refused_with_the_reason():
    b = board().place("target", "sim-cuda:0")
    reason = b.why_not("target", "sim-hip:0")
    assert "across vendors" in reason
    with pytest.raises(PlacementError, match="across vendors"):
        b.place("target", "sim-hip:0")


def test_model_that_does_not_fit_free_memory_is_refused():
    reason = board().why_not("target", "sim-cuda:1")
    assert reason is not None and "GiB free" in reason


def test_target_and_draft_together_must_fit_one_device():
    b = board(target_gib=0.6, draft_gib=0.3).place("draft", "sim-cuda:1")
    assert "together" in b.why_not("target", "sim-cuda:1")


def test_draft_goes_on_one_device_and_moves_when_placed_again():
    b = board().place("draft", "sim-cuda:0").place("draft", "sim-hip:0")
    assert b.draft == "sim-hip:0"
    assert b.roles_on("sim-cuda:0") == ()


def test_draft_on_another_vendor_is_a_split_run():
    b = board().place("target", "sim-cuda:0").place("draft", "sim-hip:0")
    assert b.placement().mode == "split"


def test_a_device_that_is_gone_is_refused():
    b = board().with_devices([d for d in DEVICES if d.id != "sim-hip:0"])
    assert b.why_not("draft", "sim-hip:0") == "no device 'sim-hip:0' any more"


def test_devices_that_vanish_take_their_roles_with_them():
    b = board().place("target", "sim-cuda:0").place("draft", "sim-hip:0")
    b = b.with_devices([d for d in DEVICES if d.id != "sim-hip:0"])
    assert b.draft is None and b.target == ("sim-cuda:0",)


def test_placing_twice_on_the_same_card_is_refused():
    b = board().place("target", "sim-cuda:0")
    assert "already" in b.why_not("target", "sim-cuda:0")


def test_remove_and_move():
    b = board(target_gib=1).place("target", "sim-cuda:0").place("target", "sim-cuda:1")
    assert b.remove("target", "sim-cuda:0").target == ("sim-cuda:1",)
    moved = board().place("draft", "sim-cuda:0").move("draft", "sim-cuda:0", "cpu")
    assert moved.draft == "cpu"


def test_launch_needs_both_roles():
    with pytest.raises(PlacementError, match="TARGET"):
        board().placement()
    with pytest.raises(PlacementError, match="DRAFT"):
        board().place("target", "sim-cuda:0").placement()


def test_unknown_memory_is_not_judged():
    b = Board.of(DEVICES).with_models(10**15, 10**15)
    assert b.why_not("target", "sim-cuda:0") is None


def test_selected_chip():
    assert board().select("draft").selected == "draft"
    with pytest.raises(ValueError):
        board().select("drafter")


def test_free_memory_from_a_sample():
    assert free_memory(None) is None
    assert free_memory(Sample("x", 0.0, memory_used_bytes=1, memory_total_bytes=None)) is None
    assert free_memory(Sample("x", 0.0, memory_used_bytes=3, memory_total_bytes=10)) == 7


def test_roles_stranded_on_devices_that_went_are_named_with_their_device():
    b = board(target_gib=1).place("target", "sim-cuda:0").place("target", "sim-cuda:1")
    b = b.place("draft", "sim-hip:0")
    there = [d for d in DEVICES if d.id not in ("sim-cuda:1", "sim-hip:0")]

    assert b.stranded_roles(there) == (("target", "sim-cuda:1"), ("draft", "sim-hip:0"))
    assert b.stranded_roles(DEVICES) == ()
    assert b.with_devices(there).target == ("sim-cuda:0",)  # the split keeps the card left
