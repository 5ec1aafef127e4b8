"""Notebook 07's charts of the rehearsal: who answered with which version, and each move shaded.

`answers_figure` is the section 4 chart (introduced in notebook 07, section 4); `shade_moves` shades
the moves on any axis with seconds from the start, as the Prometheus chart of section 5 does too.
"""

import matplotlib.pyplot as plt

VERSION_COLORS = ("tab:blue", "tab:orange")  # old version, new version: the same in every chart
PROTOCOL_MARKERS = {"REST": "o", "gRPC": "x"}


def shade_moves(axis, moves, t0, label_height=None):
    """Shade each move's span {name: (start, end)} (time.time() values) in seconds from `t0`.

    With `label_height` (the top of the data), each move's name is written at its start, one line
    below the previous, above the data.
    """
    for row, (move, (start, end)) in enumerate(moves.items()):
        axis.axvspan(start - t0, end - t0, alpha=0.12, color="gray")
        if label_height is not None:
            axis.text(start - t0, label_height + 0.25 + 0.35 * row, f" {move}", fontsize=8)


def answers_figure(answers, moves, versions, t0, title):
    """A scatter of every answered request: when it started (x), which replica answered (y), which
    version (colour) over which protocol (marker), the moves shaded; the legend below the axes."""
    names = sorted({a.replica for a in answers if a.replica}, key=lambda name: int(name.split("-")[1]))
    figure, axis = plt.subplots(figsize=(10, 4.6))
    for version, color in zip(versions, VERSION_COLORS):
        for protocol, marker in PROTOCOL_MARKERS.items():
            chosen = [a for a in answers if a.version == version and a.protocol == protocol and not a.error]
            axis.scatter([a.started - t0 for a in chosen], [names.index(a.replica) for a in chosen], s=10,
                         marker=marker, color=color, label=f"version {version}, {protocol}")
    shade_moves(axis, moves, t0, label_height=len(names) - 1)
    axis.set_yticks(range(len(names)), names)
    axis.set_ylim(-0.5, len(names) + 0.35 * len(moves))
    axis.set(xlabel="seconds from the first move", ylabel="replica that answered", title=title)
    axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=4, frameon=False)
    figure.tight_layout()
    return figure
