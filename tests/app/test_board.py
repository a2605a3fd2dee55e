"""The placement board: what may go where, and why not."""

import pytest

from app.board import Board, free_memory
from backends.base import Sample
from backends.placement import Placement, PlacementError
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


def test_a_target_too_big_for_every_card_of_its_kind_together_is_refused():
    # 100 GiB needs 120: the two CUDA cards have 78 + 1 GiB free
    reason = board(target_gib=100).why_not("target", "sim-cuda:1")
    assert reason == (
        "the target needs about 120.0 GiB but sim-cuda:0, sim-cuda:1 have 79.0 GiB free, "
        "all of them together"
    )
    # the CPU is one device: what it has free is all there is
    assert board(target_gib=50).why_not("target", "cpu") == (
        "the target needs about 60.0 GiB but cpu has 56.0 GiB free"
    )


def small_cards(free_gib: dict[str, float], target_gib: float, draft_gib: float) -> Board:
    """The fixed devices with these GiB free (the others report none) and models of these sizes."""
    free = {d.id: None for d in DEVICES} | {i: int(g * GIB) for i, g in free_gib.items()}
    return (
        Board.of(DEVICES).with_models(int(target_gib * GIB), int(draft_gib * GIB)).with_free(free)
    )


def test_a_target_that_fits_only_split_is_built_card_by_card_and_checked_whole():
    # 10 GiB needs 12; each CUDA card has 8 free, the two together 16
    b = small_cards({"sim-cuda:0": 8, "sim-cuda:1": 8, "sim-hip:0": 8}, 10, 1)
    b = b.place("target", "sim-cuda:0").place("draft", "sim-hip:0")  # too small alone: welcome
    assert b.missing() == (
        "the target needs about 12.0 GiB but sim-cuda:0 has 8.0 GiB free: 4.0 GiB short; "
        "add a card to the TARGET (sim-cuda:1 has 8.0 GiB free)"
    )
    with pytest.raises(PlacementError, match="4.0 GiB short; add a card to the TARGET"):
        b.placement()
    b = b.place("target", "sim-cuda:1")
    assert b.missing() is None and b.shortfall() is None
    assert b.placement() == Placement(("sim-cuda:0", "sim-cuda:1"), "sim-hip:0")


def test_a_draft_on_a_card_of_the_split_leaves_the_target_the_rest_of_it():
    free = {"sim-cuda:0": 8, "sim-cuda:1": 8}
    fits = small_cards(free, 10, 2).place("target", "sim-cuda:0").place("target", "sim-cuda:1")
    assert fits.place("draft", "sim-hip:0").placement().mode == "split"
    # the draft's 2.4 GiB on sim-cuda:1 leave the target 13.6 of the 16: enough for 12
    assert fits.place("draft", "sim-cuda:1").placement().mode == "inprocess"
    # a 4 GiB draft takes 4.8: 11.2 left, less than the target's 12
    b = small_cards(free, 10, 4).place("target", "sim-cuda:0").place("target", "sim-cuda:1")
    b = b.place("draft", "sim-cuda:1")
    assert b.missing() == (
        "the target needs about 12.0 GiB but sim-cuda:0, sim-cuda:1 have 11.2 GiB free beside "
        "the draft: 0.8 GiB short; move the DRAFT to another card"
    )


def test_target_and_draft_together_on_one_card_are_judged_together():
    b = board(target_gib=0.6, draft_gib=0.3).place("draft", "sim-cuda:1")
    b = b.place("target", "sim-cuda:1")  # another CUDA card could still join
    assert "together" in b.missing() and "add a card to the TARGET (sim-cuda:0" in b.missing()
    with pytest.raises(PlacementError, match="target and draft together"):
        b.placement()


def test_a_draft_that_does_not_fit_its_card_is_refused():
    assert board(draft_gib=2).why_not("draft", "sim-cuda:1") == (
        "the draft needs about 2.4 GiB but sim-cuda:1 has 1.0 GiB free"
    )


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
