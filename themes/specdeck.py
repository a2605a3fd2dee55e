"""specdeck's Textual themes: dark (default), light and high contrast.

Vendor badges, role chips and charts take their colours from the Okabe–Ito palette, whose
eight colours stay distinct for the common forms of colour blindness; each badge also
carries its name in text, so colour is never the only cue.
"""

from __future__ import annotations

from textual.color import Color
from textual.theme import Theme

# Okabe & Ito (2008), "Color Universal Design"
OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky-blue": "#56B4E9",
    "bluish-green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish-purple": "#CC79A7",
}

# CSS variables every specdeck stylesheet uses; any theme may override them. A badge's text is
# black or white, whichever reads better on it (`readable_text`).
VARIABLE_DEFAULTS = {
    "badge-cuda": OKABE_ITO["bluish-green"],
    "badge-hip": OKABE_ITO["vermillion"],
    "badge-cpu": OKABE_ITO["blue"],
    "badge-sim": OKABE_ITO["reddish-purple"],
    # borders of panes and cards: WCAG asks 3:1 for the edges of what one operates
    "pane-border": "#7A808B",
    "role-target": OKABE_ITO["orange"],
    "role-draft": OKABE_ITO["sky-blue"],
    "role-text": "#000000",
    "chart-utilization": OKABE_ITO["sky-blue"],
    "chart-memory": OKABE_ITO["orange"],
    "chart-acceptance": OKABE_ITO["bluish-green"],
    "chart-low": OKABE_ITO["blue"],
    "drop-ok": OKABE_ITO["bluish-green"],
    "drop-refused": OKABE_ITO["vermillion"],
}

# the same hues, darker, for light backgrounds: the Okabe–Ito ones fade into them as text or bars
LIGHT_VARIABLE_DEFAULTS = {
    **VARIABLE_DEFAULTS,
    "pane-border": "#7D7D77",
    "role-target": "#B87F00",
    "role-draft": "#3592C8",
    "drop-ok": "#00785A",
    "drop-refused": "#A34700",
    "chart-acceptance": "#00785A",
    "chart-utilization": OKABE_ITO["blue"],
    "chart-memory": "#A34700",
    "chart-low": "#6B6B6B",
}


def variable_defaults(theme: Theme) -> dict[str, str]:
    """specdeck's colour variables for a theme that does not set them (Textual's own): the
    darker shades on a light theme, and borders drawn from its own colours at 3:1."""
    colours = theme.to_color_system().generate()
    grounds = [colours[k] for k in ("background", "surface", "panel")]
    return {
        **(VARIABLE_DEFAULTS if theme.dark else LIGHT_VARIABLE_DEFAULTS),
        "pane-border": border_colour(colours["foreground"], grounds),
    }


def border_colour(foreground: str, grounds: list[str], ratio: float = 3.2) -> str:
    """The foreground blended into the first ground as little as gives `ratio` against every
    ground (WCAG asks 3:1 of a border), or the foreground itself."""
    fg = Color.parse(foreground)
    for share in (0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
        blend = Color.parse(grounds[0]).blend(fg, share).hex6
        if all(contrast_ratio(blend, Color.parse(g).hex6) >= ratio for g in grounds):
            return blend
    return fg.hex6


DARK = Theme(
    name="specdeck-dark",
    primary=OKABE_ITO["sky-blue"],
    secondary=OKABE_ITO["blue"],
    accent=OKABE_ITO["orange"],
    warning=OKABE_ITO["yellow"],
    error=OKABE_ITO["vermillion"],
    success=OKABE_ITO["bluish-green"],
    foreground="#E6E6E6",
    background="#14161A",
    surface="#1C1F24",
    panel="#262A31",
    dark=True,
    variables={
        **VARIABLE_DEFAULTS,
        "button-color-foreground": "#000000",
        "scrollbar": "#7A808B",
        "scrollbar-hover": "#9AA0AA",
        "scrollbar-active": OKABE_ITO["sky-blue"],
        "scrollbar-background": "#262A31",
        "scrollbar-background-hover": "#262A31",
        "scrollbar-background-active": "#262A31",
    },
)

LIGHT = Theme(
    name="specdeck-light",
    primary=OKABE_ITO["blue"],
    secondary=OKABE_ITO["sky-blue"],
    accent=OKABE_ITO["vermillion"],
    warning="#B38600",
    error=OKABE_ITO["vermillion"],
    success=OKABE_ITO["bluish-green"],
    foreground="#1A1A1A",
    background="#F7F7F5",
    surface="#FFFFFF",
    panel="#E8E8E4",
    dark=False,
    variables={
        **LIGHT_VARIABLE_DEFAULTS,
        "button-color-foreground": "#000000",
        "block-cursor-foreground": "#FFFFFF",
        "footer-key-foreground": "#A34700",  # vermillion, the accent, is 3.2:1 on the footer
        "scrollbar": "#7D7D77",
        "scrollbar-hover": "#5F5F5A",
        "scrollbar-active": OKABE_ITO["blue"],
        "scrollbar-background": "#E8E8E4",
        "scrollbar-background-hover": "#E8E8E4",
        "scrollbar-background-active": "#E8E8E4",
    },
)

HIGH_CONTRAST = Theme(
    name="specdeck-contrast",
    primary=OKABE_ITO["yellow"],
    secondary=OKABE_ITO["sky-blue"],
    accent=OKABE_ITO["orange"],
    warning=OKABE_ITO["yellow"],
    error="#FF6E40",
    success="#3DDC97",
    foreground="#FFFFFF",
    background="#000000",
    surface="#000000",
    panel="#1A1A1A",
    dark=True,
    luminosity_spread=0.3,
    text_alpha=1.0,
    variables={
        **VARIABLE_DEFAULTS,
        "badge-cuda": "#3DDC97",
        "badge-hip": "#FF6E40",
        "badge-cpu": OKABE_ITO["sky-blue"],
        "badge-sim": "#F5A3D0",
        "pane-border": "#8A8A8A",
        "button-color-foreground": "#000000",
        "scrollbar": "#8A8A8A",
        "scrollbar-hover": "#BBBBBB",
        "scrollbar-active": OKABE_ITO["yellow"],
        "scrollbar-background": "#1A1A1A",
        "scrollbar-background-hover": "#1A1A1A",
        "scrollbar-background-active": "#1A1A1A",
        "chart-utilization": OKABE_ITO["yellow"],
        "chart-memory": "#FFFFFF",
        "chart-acceptance": "#3DDC97",
        "chart-low": "#808080",
    },
)

THEMES = (DARK, LIGHT, HIGH_CONTRAST)
DEFAULT_THEME = DARK.name


def relative_luminance(colour: str) -> float:
    """WCAG 2 relative luminance of a `#RRGGBB` colour."""
    channels = (int(colour.lstrip("#")[i : i + 2], 16) / 255 for i in (0, 2, 4))
    r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(one: str, other: str) -> float:
    """WCAG 2 contrast ratio of two `#RRGGBB` colours (1 to 21)."""
    high, low = sorted((relative_luminance(one), relative_luminance(other)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def readable_text(background: str) -> str:
    """Black or white, whichever contrasts more with `background` (`#RRGGBB`)."""
    return max(("#000000", "#FFFFFF"), key=lambda text: contrast_ratio(text, background))
