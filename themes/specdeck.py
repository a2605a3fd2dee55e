"""specdeck's Textual themes: dark (default), light and high contrast.

Vendor badges, role chips and charts take their colours from the Okabe–Ito palette, whose
eight colours stay distinct for the common forms of colour blindness; each badge also
carries its name in text, so colour is never the only cue.
"""

from __future__ import annotations

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

# CSS variables every specdeck stylesheet uses; any theme may override them
VARIABLE_DEFAULTS = {
    "badge-cuda": OKABE_ITO["bluish-green"],
    "badge-hip": OKABE_ITO["vermillion"],
    "badge-cpu": OKABE_ITO["blue"],
    "badge-sim": OKABE_ITO["reddish-purple"],
    "badge-text": "#FFFFFF",
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
    variables=dict(VARIABLE_DEFAULTS),
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
        **VARIABLE_DEFAULTS,
        "chart-utilization": OKABE_ITO["blue"],
        "chart-memory": OKABE_ITO["vermillion"],
        "chart-low": OKABE_ITO["sky-blue"],
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
        "badge-text": "#000000",
        "chart-utilization": OKABE_ITO["yellow"],
        "chart-memory": "#FFFFFF",
        "chart-acceptance": "#3DDC97",
        "chart-low": "#808080",
    },
)

THEMES = (DARK, LIGHT, HIGH_CONTRAST)
DEFAULT_THEME = DARK.name
