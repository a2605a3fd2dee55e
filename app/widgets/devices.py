"""Device cards: vendor badge, name, memory bar, utilization sparkline, power, temperature
and the roles placed on the device (with the daemon's pid and memory once it runs). The grid
reads the device sampler on its own timer and follows the devices there now."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.binding import Binding
from textual.color import Color
from textual.containers import Grid, VerticalScroll
from textual.markup import escape
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import Static

from app.widgets.drag import Draggable, DropTarget
from app.widgets.figures import NA, bar, gib, number, size
from app.widgets.palette import CHIP_LABELS
from app.widgets.spark import spark_text
from app.widgets.telemetry import SamplerDevicesChanged, follow_sampler_devices, utilization_series
from backends.base import Device, Sample
from backends.cpu import resident_bytes
from themes.specdeck import readable_text

if TYPE_CHECKING:
    from backends.discovery import Inventory
    from backends.sampler import DeviceSampler

BADGES = {"cuda": "CUDA", "hip": "HIP", "cpu": "CPU"}
CARD_WIDTH = 34  # cells a card needs to show its memory bar and power without cutting
MOVE_KEYS = Binding.Group("Move", compact=True)  # the footer shows `←→ Move`
TEXT_ROWS = 4  # head, memory, utilization, power; the roles placed take the row below them


@dataclass(frozen=True)
class RoleOnCard:
    """A role placed on a card; pid and memory once its daemon runs.

    `resident`: the memory is the daemon's resident set size in host RAM (a device that runs
    its work on the host), not memory the device reports for it.
    """

    role: str
    pid: int | None = None
    memory_bytes: int | None = None
    resident: bool = False

    @property
    def label(self) -> str:
        """What the card shows for this role."""
        text = CHIP_LABELS[self.role]
        if self.pid is not None:
            if self.resident:  # host RAM, so it says RSS: not to be read as device memory
                text += f" pid {self.pid} RSS {size(self.memory_bytes)}"
            else:
                text += f" pid {self.pid} {gib(self.memory_bytes)} GiB"
        return f" {text} "


class PlacedRole(Draggable):
    """A role sitting on a card; drag it to another card, or off every card to remove it."""


class PlaceRequested(Message):
    """The keyboard asked to place the chosen chip on a card."""

    def __init__(self, device_id: str) -> None:
        super().__init__()
        self.device_id = device_id


class RemoveRequested(Message):
    """The keyboard asked to remove a role from a card."""

    def __init__(self, device_id: str) -> None:
        super().__init__()
        self.device_id = device_id


class DevicesFollowed(Message):
    """The grid took up the sampler's new device list: a gone device's card went, a new
    device got one."""

    def __init__(self, inventory: Inventory) -> None:
        super().__init__()
        self.inventory = inventory


class ReadingsShown(Message):
    """The grid drew the sampler's latest reading of each device (None: none yet)."""

    def __init__(self, latest: Mapping[str, Sample | None]) -> None:
        super().__init__()
        self.latest = dict(latest)


class DeviceCard(DropTarget, can_focus=True):
    """One discovered device and what is placed on it.

    The card draws its head and telemetry itself (one widget, no per-second relayout); only
    the roles placed on it are child widgets, because they can be dragged.
    """

    BINDINGS = [
        Binding("enter,space", "place", "Place", tooltip="Place the chosen chip on this card"),
        Binding("delete,backspace,x", "remove", "Remove", tooltip="Take a role off this card"),
        Binding("left", "move(-1)", "Prev card", key_display="←", group=MOVE_KEYS),
        Binding("right", "move(1)", "Next card", key_display="→", group=MOVE_KEYS),
        Binding("up", "move_row(-1)", "Card above", show=False),
        Binding("down", "move_row(1)", "Card below", show=False),
    ]

    roles: reactive[tuple[RoleOnCard, ...]] = reactive((), init=False)
    sample: reactive[Sample | None] = reactive(None)
    utilization: reactive[tuple[float, ...]] = reactive(())

    def __init__(self, device: Device) -> None:
        super().__init__(id=card_dom_id(device.id), classes=f"-{device.backend}")
        self.device = device
        self.drop_id = device.id
        self.border_title = device.id
        self._placed: tuple[tuple[str, int | None], ...] = ()  # (role, its daemon's pid)

    def render(self) -> str:
        return "\n".join(
            (*self.head_lines(), self.memory_text(), self.utilization_text(), self.power_text())
        )

    def head_lines(self) -> tuple[str, ...]:
        """Vendor badge, SIM badge and device name; the name gets a line of its own when it
        does not fit beside the badges and the card has a row to spare (it is cut otherwise)."""
        d = self.device
        labels = [BADGES.get(d.backend, d.backend.upper()), *(["SIM"] if d.simulated else [])]
        badges = self.badge(d.backend, labels[0]) + (
            self.badge("sim", "SIM") if d.simulated else ""
        )
        beside = sum(len(label) + 3 for label in labels)  # " CUDA " and a space after it
        width, rows = self.content_size
        if beside + len(d.name) <= width or rows < TEXT_ROWS + 2:
            return (badges + escape(d.name),)
        name = d.name if len(d.name) <= width else d.name[: max(width - 1, 0)] + "…"
        return badges.rstrip(), escape(name)

    def badge(self, name: str, label: str) -> str:
        """A badge in the theme's `badge-NAME` colour, its text black or white to read best."""
        colour = Color.parse(self.app.theme_variables.get(f"badge-{name}", "#808080"))
        return f"[{readable_text(colour.hex6)} on $badge-{name} b] {label} [/] "

    def memory_text(self) -> str:
        """mem ████░░ used/total GiB."""
        s = self.sample
        used = None if s is None else s.memory_used_bytes
        total = (s.memory_total_bytes if s else None) or self.device.memory_total_bytes
        fraction = None if used is None or not total else used / total
        return f"mem  [$chart-memory]{bar(fraction, 10)}[/] {gib(used)}/{gib(total)} GiB"

    def utilization_text(self) -> str:
        """util ▁▂▅ 45%."""
        util = None if self.sample is None else self.sample.utilization_percent
        width = max(0, self.content_size.width - 11)
        spark = spark_text(list(self.utilization), width, 100.0)
        return f"util [$chart-utilization]{spark}[/] {number(util, '.0f', '%'):>5}"

    def power_text(self) -> str:
        """power used/limit W, temperature."""
        s = self.sample
        if s is None:
            return f"power {NA}  temp {NA}"
        power = number(s.power_watts, ".0f")
        if s.power_limit_watts is not None and s.power_watts is not None:
            power += f"/{s.power_limit_watts:.0f}"
        unit = " W" if s.power_watts is not None else ""
        return f"power {power}{unit}  temp {number(s.temperature_c, '.0f', ' °C')}"

    def show(self, sample: Sample | None, utilization: tuple[float, ...]) -> None:
        """Draw the latest reading and the utilization history (and the daemons' memory)."""
        self.sample = sample
        self.utilization = utilization
        self.roles = self._roles_now()

    def show_roles(self, placed: Sequence[tuple[str, int | None]]) -> None:
        """The roles placed on this device, each with its daemon's pid once that runs here."""
        self._placed = tuple(placed)
        self.roles = self._roles_now()

    def _roles_now(self) -> tuple[RoleOnCard, ...]:
        """The placed roles with their daemons' memory from the latest reading."""
        roles = []
        for role, pid in self._placed:
            memory, resident = None, False
            if pid is not None:
                for process in self.sample.processes if self.sample else ():
                    if process.pid == pid:
                        memory = process.memory_bytes
                if memory is None and self.device.runs_on_host:
                    # no per-device figure where the work runs on the host: its host memory
                    memory, resident = resident_bytes(pid), True
            roles.append(RoleOnCard(role, pid, memory, resident))
        return tuple(roles)

    async def watch_roles(self, roles: tuple[RoleOnCard, ...]) -> None:
        chips = list(self.query_children(PlacedRole))
        if [chip.role for chip in chips] == [r.role for r in roles]:
            # the same roles, a new reading of their daemons' memory: relabel the chips, as
            # mounting them again every sample would cost a layout (and end a drag of one)
            for chip, role in zip(chips, roles, strict=True):
                if chip.label != role.label:
                    chip.label = role.label
                    chip.update(role.label)
        else:
            await self.remove_children(PlacedRole)
            await self.mount_all(
                PlacedRole(r.label, r.role, source=self.device.id, classes=f"placed -{r.role}")
                for r in roles
            )
        self.set_class(bool(roles), "-occupied")

    def action_place(self) -> None:
        self.post_message(PlaceRequested(self.device.id))

    def action_remove(self) -> None:
        self.post_message(RemoveRequested(self.device.id))

    def action_move(self, step: int) -> None:
        """Focus the card `step` places away, wrapping around."""
        cards = list(self.screen.query(DeviceCard))
        cards[(cards.index(self) + step) % len(cards)].focus()

    def action_move_row(self, rows: int) -> None:
        """Focus the card in the row above or below, if there is one."""
        cards = list(self.screen.query(DeviceCard))
        columns = self.parent.styles.grid_size_columns if self.parent else 1
        there = cards.index(self) + rows * (columns or 1)
        if 0 <= there < len(cards):
            cards[there].focus()


class DeviceGrid(VerticalScroll):
    """The cards of every discovered device, in discovery order; every `refresh_s` it draws
    the sampler's latest readings and follows the devices there now."""

    def __init__(
        self,
        sampler: DeviceSampler,
        unavailable: Sequence[str] = (),
        refresh_s: float = 1.0,
        **kw,
    ) -> None:
        super().__init__(**kw)
        self.sampler = sampler
        self.refresh_s = refresh_s
        self.inventory = sampler.inventory  # the devices it shows
        self.devices = self.inventory.devices
        self.unavailable = tuple(unavailable)

    def compose(self) -> ComposeResult:
        with Grid(classes="device-cards"):
            for device in self.devices:
                yield DeviceCard(device)
        if not self.devices:
            yield Static("no devices found", classes="empty")

    def on_mount(self) -> None:
        if self.unavailable:
            names = ", ".join(line.split(":")[0] for line in self.unavailable)
            self.border_subtitle = f"{names} unavailable (see the log)"
        self.refresh_telemetry()
        self.set_interval(self.refresh_s, self.refresh_telemetry)
        follow_sampler_devices(self, self.sampler)

    def on_sampler_devices_changed(self, _: SamplerDevicesChanged) -> None:
        self.refresh_telemetry()  # new cards at once, not at the next tick

    def refresh_telemetry(self) -> None:
        """Draw the sampler's latest readings on every card, after following its devices."""
        if self.sampler.inventory is not self.inventory:
            self.inventory = self.sampler.inventory
            self.show_devices(self.inventory.devices)
            self.post_message(DevicesFollowed(self.inventory))
        latest: dict[str, Sample | None] = {}
        for device in self.devices:
            samples = self.sampler.history(device.id)
            latest[device.id] = samples[-1] if samples else None
            card = self.card(device.id)
            if card is not None:
                card.show(latest[device.id], tuple(utilization_series(samples)))
        self.post_message(ReadingsShown(latest))

    def on_resize(self) -> None:
        self._fit_columns()

    def _fit_columns(self) -> None:
        """As many card columns as fit, so a wide terminal shows every card at once."""
        columns = max(1, min(len(self.devices), self.scrollable_content_region.width // CARD_WIDTH))
        self.query_one(".device-cards", Grid).styles.grid_size_columns = columns

    def show_devices(self, devices: Sequence[Device]) -> None:
        """Follow the devices there now: a gone device's card goes, a new device gets one."""
        self.devices = tuple(devices)
        grid = self.query_one(".device-cards", Grid)
        there = {d.id for d in self.devices}
        for card in grid.query_children(DeviceCard):
            if card.device.id not in there:
                card.remove()
        previous: DeviceCard | None = None
        for device in self.devices:  # a new card goes where the device list puts it
            card = self.card(device.id)
            if card is None:
                card = DeviceCard(device)
                if previous is not None:
                    grid.mount(card, after=previous)
                else:
                    grid.mount(card, before=0 if grid.children else None)
            previous = card
        empty = self.query_children(".empty")
        if self.devices:
            empty.remove()
        elif not empty:
            self.mount(Static("no devices found", classes="empty"))
        self._fit_columns()

    def card(self, device_id: str) -> DeviceCard | None:
        """The card of a device, if it has one."""
        found = self.query(f"#{card_dom_id(device_id)}")
        return found.first(DeviceCard) if found else None


def card_dom_id(device_id: str) -> str:
    """A DOM id for a device id (`sim-cuda:0` -> `card-sim-cuda-0`)."""
    return "card-" + device_id.replace(":", "-").replace(".", "-").replace("/", "--")
