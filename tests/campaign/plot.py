#!/usr/bin/python3
"""plot.py - a fault campaign's run as a picture: messages accepted and delivered per second,
with every fault event marked.

    /usr/bin/python3 tests/campaign/plot.py RUN_DIR [-o OUT.png] [--title TEXT]

RUN_DIR is a campaign's run directory (campaign.py writes both files):
  timeline.json  {"accepted": [seconds since the start of the run, one per 250],
                  "refused": [the same, one per 4xx/5xx answer or failed transaction],
                  "delivered": [the same, one per message the sink recorded]}
  events.jsonl   one fault event per line: kind, nodes, start and end (seconds since the
                 start), ok
The picture (default RUN_DIR/campaign.png): accepted and delivered messages per second
(one-second bins) on one axis, refused answers as ticks below it, and each fault event as a
shaded span with its kind and nodes, one row per kind so that overlapping faults stay
readable. Needs Debian's python3-matplotlib; exits 2 without it or with an unreadable input.
"""

import argparse
import json
import os
import sys

# one colour per fault kind; kinds not named here get the last one
KIND_COLOURS = {
    "kill": "#d62728", "kill2": "#8c1c13", "stop": "#ff7f0e", "isolate": "#1f77b4",
    "zone": "#17becf", "oneway": "#9467bd", "flap": "#bcbd22", "transfer": "#2ca02c",
    "pair": "#e377c2", "upgrade": "#7f7f7f", "clock": "#8c564b", "disk": "#393b79",
}
OTHER_COLOUR = "#aaaaaa"


def per_second(times, length):
    """per_second - counts of times (seconds) in one-second bins 0..length-1."""
    bins = [0] * length
    for t in times:
        i = int(t)
        if 0 <= i < length:
            bins[i] += 1
    return bins


def load(run_dir):
    """load - (timeline dict, list of event dicts) of a run directory; exits 2 when unreadable."""
    try:
        with open(os.path.join(run_dir, "timeline.json")) as f:
            timeline = json.load(f)
        with open(os.path.join(run_dir, "events.jsonl")) as f:
            events = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError) as e:
        print("plot.py: %s: %s" % (run_dir, e), file=sys.stderr)
        sys.exit(2)
    for key in ("accepted", "refused", "delivered"):
        timeline.setdefault(key, [])
    return timeline, events


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("-o", "--out", help="PNG to write (default RUN_DIR/campaign.png)")
    parser.add_argument("--title", default=None)
    args = parser.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot.py: needs python3-matplotlib (apt-get install python3-matplotlib)",
              file=sys.stderr)
        sys.exit(2)
    timeline, events = load(args.run_dir)
    ends = [e["end"] if e.get("end") is not None else e["start"] for e in events]
    length = int(max([0.0] + timeline["accepted"] + timeline["delivered"] + timeline["refused"]
                     + ends)) + 2
    xs = list(range(length))
    kinds = sorted({e["kind"] for e in events})
    fig, (ax, lanes) = plt.subplots(2, 1, sharex=True, figsize=(14, 6.5),
                                    gridspec_kw={"height_ratios": [3, max(1, len(kinds)) * 0.35]})
    ax.plot(xs, per_second(timeline["accepted"], length), lw=0.9, color="#1f77b4",
            label="accepted (250) per second")
    ax.plot(xs, per_second(timeline["delivered"], length), lw=0.9, color="#2ca02c",
            label="delivered per second")
    if timeline["refused"]:
        ax.plot(timeline["refused"], [0] * len(timeline["refused"]), "|", color="#d62728",
                markersize=8, label="refused or failed (%d)" % len(timeline["refused"]))
    for e, end in zip(events, ends):
        ax.axvspan(e["start"], max(end, e["start"] + 0.2), alpha=0.08,
                   color=KIND_COLOURS.get(e["kind"], OTHER_COLOUR), lw=0)
    ax.set_ylabel("messages / s")
    ax.set_ylim(bottom=-1)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(args.title or "fault campaign: %d events" % len(events))
    for row, kind in enumerate(kinds):
        for e, end in zip(events, ends):
            if e["kind"] != kind:
                continue
            lanes.broken_barh([(e["start"], max(end - e["start"], 0.3))], (row - 0.4, 0.8),
                              color=KIND_COLOURS.get(kind, OTHER_COLOUR),
                              alpha=1.0 if e.get("ok", True) else 0.4)
    lanes.set_yticks(range(len(kinds)))
    lanes.set_yticklabels(kinds, fontsize=8)
    lanes.set_ylim(-0.6, max(1, len(kinds)) - 0.4)
    lanes.set_xlabel("seconds since the start of the run")
    lanes.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    out = args.out or os.path.join(args.run_dir, "campaign.png")
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main()
