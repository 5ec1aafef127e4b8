"""Notebook 06's charts and headline tables: plumbing the learner need not read to follow the lesson.

Every chart follows the house style: ticks at the measured values, one
colour per series in every panel, legends outside the data, linear axes from zero, a title that says
what the chart shows, and alt text (`show`). Each function says which section of notebook 06 uses it.
"""

import html

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display

# One colour per series, the same in every panel of a figure.
WARMUP_COLOURS = {"no warmup": "tab:red", "warmup": "tab:blue", "steady p50": "tab:gray"}
BATCHING_COLOURS = {"no batching": "tab:blue", "batching": "tab:orange", "in process": "tab:green"}
PERCENTILE_COLOURS = {50: "tab:blue", 90: "tab:purple", 99: "tab:red"}
RATE_COLOUR = "tab:green"


def alt_text(figure):
    """A figure's alt text: its suptitle, else its axes' titles."""
    title = figure.get_suptitle()
    titles = [axis.get_title() for axis in figure.axes if axis.get_title()]
    return " ".join("; ".join([title] if title else titles).split()) or "A chart"


def show(figure, alt=None):
    """Display `figure` with alt text in its output's metadata (labtools/report.py puts it on the image)."""
    display(figure, metadata={"image/png": {"alt": alt or alt_text(figure)}})
    plt.close(figure)


def legend_below(figure, ncol):
    """One legend for the whole figure, under the axes, off the data."""
    figure.legend(loc="outside lower center", ncol=ncol, frameon=False)


def warmup_chart(first_request_ms, steady_ms, versions, trials):
    """Section 1: the first request's latency per version, with and without warmup, beside the steady p50."""
    figure, axis = plt.subplots(figsize=(7, 3.8), layout="constrained")
    positions = np.arange(len(versions))
    bars = [("no warmup", "first request, no warmup", first_request_ms["no warmup"]),
            ("warmup", "first request, warmup", first_request_ms["warmup"]),
            ("steady p50", "steady p50 (after the first request)", steady_ms)]
    for offset, (key, label, by_version) in zip((-0.27, 0, 0.27), bars):
        axis.bar(positions + offset, [np.median(by_version[v]) for v in versions], 0.27, label=label,
                 color=WARMUP_COLOURS[key])
    axis.set_xticks(positions, [f"version {v}" for v in versions])
    axis.set_ylim(bottom=0)
    axis.set_ylabel("latency (ms)")
    axis.set_title(f"First gRPC Predict after a fresh server start, with and without warmup\n"
                   f"(median of {trials} starts; channel opened before timing)")
    legend_below(figure, 3)
    return figure


def prometheus_chart(rate, quantiles, load_start):
    """Section 2: the request rate and latency quantiles Prometheus computed during the load."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    left.plot([t - load_start for t, _ in rate], [v for _, v in rate], color=RATE_COLOUR,
              label="request rate")
    left.set(xlabel="seconds into the load", ylabel="requests/s", title="Request rate")
    for q, series in quantiles.items():
        percent = int(q * 100)
        right.plot([t - load_start for t, _ in series], [v / 1000 for _, v in series],
                   color=PERCENTILE_COLOURS[percent], label=f"p{percent} latency")
    right.set(xlabel="seconds into the load", ylabel="ms", title="Latency quantiles")
    for axis in (left, right):
        axis.set_ylim(bottom=0)
        axis.set_xlim(left=0)
    figure.suptitle("What Prometheus computed from the server's metrics during the load")
    legend_below(figure, 3)
    return figure


def batching_chart(results, levels, in_process):
    """Section 3: served throughput and latency against concurrent clients, with and without batching,
    beside the in-process throughput of the same signature at a few batch sizes."""
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(13, 4), layout="constrained",
                                                 width_ratios=[1, 1, 0.7])
    for setting, by_clients in results.items():
        colour = BATCHING_COLOURS[setting]
        left.plot(levels, [by_clients[c].throughput for c in levels], marker="o", color=colour,
                  label=f"served, {setting}")
        middle.plot(levels, [by_clients[c].percentile_ms(50) for c in levels], marker="o", color=colour)
        middle.plot(levels, [by_clients[c].percentile_ms(99) for c in levels], marker="x", color=colour,
                    linestyle="--")
    for axis in (left, middle):
        axis.set_xscale("log", base=2)
        axis.set_xticks(levels, [str(c) for c in levels])
        axis.minorticks_off()
        axis.set_xlabel("concurrent gRPC clients")
        axis.set_ylim(bottom=0)
    left.set(ylabel="requests/s (one image each)", title="Served throughput")
    middle.set(ylabel="ms", title="Served latency: p50 solid, p99 dashed")
    sizes = list(in_process)
    right.bar([str(b) for b in sizes], [in_process[b] for b in sizes], color=BATCHING_COLOURS["in process"],
              label="in process, one call per batch")
    right.set(xlabel="batch size", ylabel="images/s", title="In process, same signature")
    top = max(max(r.throughput for r in by_c.values()) for by_c in results.values())
    for axis in (left, right):  # same scale: images/s served and in process compare directly
        axis.set_ylim(0, 1.1 * max(top, *in_process.values()))
    figure.suptitle("Does server-side batching raise throughput on this machine?")
    legend_below(figure, 3)
    return figure


def benchmark_chart(benchmark, records):
    """Section 4: latency percentiles per protocol and payload."""
    figure, axis = plt.subplots(figsize=(8, 3.8), layout="constrained")
    labels = [f"{protocol} {payload}" for protocol, payload in benchmark]
    positions = np.arange(len(labels))
    for offset, q in [(-0.27, 50), (0, 90), (0.27, 99)]:
        axis.bar(positions + offset, [r.percentile_ms(q) for r in benchmark.values()], 0.27, label=f"p{q}",
                 color=PERCENTILE_COLOURS[q])
    axis.set_xticks(positions, labels)
    axis.set_ylim(bottom=0)
    axis.set_ylabel("latency (ms)")
    axis.set_title(f"gRPC vs REST latency, float and JPEG payloads ({records} requests per path, one image)")
    legend_below(figure, 3)
    return figure


def relabel_chart(answers, steps):
    """Section 5: which version answered each request for `stable` while the label moved."""
    start = answers[0][0]
    figure, axis = plt.subplots(figsize=(8, 3), layout="constrained")
    axis.scatter([t - start for t, _ in answers], [str(v) for _, v in answers], s=4, color="tab:blue")
    for moment, text in steps:
        axis.axvline(moment - start, color="gray", linestyle="--")
        axis.text(moment - start, 0.5, f" {text}", fontsize=8)
    axis.set_xlim(left=0)
    axis.set(xlabel="seconds", ylabel="version answering",
             title="Version answering requests for 'stable' while the label moves (one dot per request)")
    return figure


class Table:
    """A small table with units in its header: HTML in a notebook and the report, aligned text elsewhere.

    `rows` are lists of already formatted cells. Used for notebook 06's headline figures.
    """

    def __init__(self, columns, rows):
        self.columns, self.rows = list(columns), [[str(cell) for cell in row] for row in rows]

    def __repr__(self):
        widths = [max(len(str(row[i])) for row in [self.columns, *self.rows]) for i in range(len(self.columns))]
        lines = [self.columns, *self.rows]
        return "\n".join("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in
                                   enumerate(zip(row, widths))).rstrip() for row in lines)

    def _repr_html_(self):
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
