"""`mbgen report OUT`: a self-contained report.html of a generated folder.

It shows the memory plan as a picture (each buffer a rectangle: the layers it lives across
times its place in the arena; the caller's input/output buffers in a band of their own;
outputs written in place over their input, and the buffers of streamed stages, each in a
colour of their own), a per-layer table, the streamed stages' layers with their recompute,
and the RAM/flash budget bars. Everything is computed here from report.json
into small records; the Jinja template only prints them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mbgen.errors import UserError

REPORT_HTML = "report.html"
PLOT_WIDTH = 960          # px of the lifetime axis
ARENA_HEIGHT = 320        # px the arena's bytes span
BAND_HEIGHT = 40          # px of the caller's-buffers band below the arena
LABEL_HEIGHT = 150        # px below the plot for the rotated layer names
LEFT = 70                 # px for the offset axis
COLOURS = {"arena": "#4a7dbf", "scratch": "#e08a2c", "input": "#6aa84f", "output": "#a64d79",
           "in_place": "#2a9d8f", "streamed": "#7b5ea7"}


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    width: float
    height: float
    colour: str
    title: str       # the tooltip: layer, tensor, bytes, lifetime, offset
    label: str       # printed inside when it fits, else ""


@dataclass(frozen=True)
class Tick:
    x: float
    y: float
    text: str


@dataclass(frozen=True)
class Segment:
    x: float
    width: float
    colour: str
    title: str


@dataclass(frozen=True)
class BudgetBar:
    name: str
    used: int
    budget: int | None
    segments: tuple[Segment, ...]
    caption: str


def _kib(n: int) -> str:
    return f"{n / 1024:.1f} KB"


def _read_report(out_dir: Path) -> dict:
    try:
        report = json.loads((out_dir / "report.json").read_text())
    except FileNotFoundError:
        raise UserError(f"{out_dir} has no report.json; is it a folder written by "
                        "`mbgen compile`?") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {out_dir / 'report.json'}: {exc}") from None
    if not isinstance(report, dict) or "buffers" not in report or "layers" not in report:
        raise UserError(f"{out_dir}/report.json has no memory plan; compile the model again "
                        "with this mbgen")
    return report


def timeline(report: dict) -> tuple[list[Rect], list[Tick], list[Tick], float]:
    """Rectangles of the buffers, layer-name ticks, offset ticks, and the picture's height."""
    layers = report["layers"]
    column = PLOT_WIDTH / max(len(layers), 1)
    arena = max(report["arena_bytes"], 1)
    scale = ARENA_HEIGHT / arena
    band_top = ARENA_HEIGHT + 10
    stages = {stage["name"]: stage for stage in report.get("streaming", [])}
    rects = []
    for b in report["buffers"]:
        x = LEFT + b["first_use"] * column
        width = (b["last_use"] - b["first_use"] + 1) * column
        title = (f"{b['layer']}: {b['tensor']}, {b['bytes']:,} bytes, layers "
                 f"{b['first_use']}-{b['last_use']}")
        if b["offset"] is not None:
            y, height = b["offset"] * scale, max(b["bytes"] * scale, 1.0)
            title += f", arena offset {b['offset']:,}"
        else:  # the caller's buffers: a band of their own below the arena
            y = band_top + (0 if b["where"] == "input" else BAND_HEIGHT / 2)
            height = BAND_HEIGHT / 2 - 2
            title += f", in the caller's {b['where']} buffer"
        colour = COLOURS.get(b["where"], COLOURS["arena"])
        if b.get("over"):   # written in place over its input (the two overlap on purpose)
            colour = COLOURS["in_place"]
            title += f", written in place over {b['over']}"
        stage = stages.get(b["layer"])
        if stage is not None:   # made by a streamed stage: its output, or its windows
            colour = COLOURS["streamed"]
            title += (f", streamed stage of {len(stage['layers'])} layers in "
                      f"{stage['band_rows']}-row bands (windows {stage['window_bytes']:,} "
                      f"bytes)")
        label = b["layer"] if width >= 7 * len(b["layer"]) and height >= 12 else ""
        rects.append(Rect(x, y, width, height, colour, title, label))
    height = band_top + BAND_HEIGHT
    names = [Tick(LEFT + (i + 0.5) * column, height + 6, f"{i} {layer['name']}")
             for i, layer in enumerate(layers)]
    offsets = [Tick(LEFT - 6, f * ARENA_HEIGHT, _kib(int(f * arena)))
               for f in (0.0, 0.25, 0.5, 0.75, 1.0)]
    return rects, names, offsets, height + LABEL_HEIGHT


def budget_bars(report: dict) -> list[BudgetBar]:
    memory = report.get("memory") or {}
    bars = []
    ram_parts = [("arena", memory.get("arena_bytes"), COLOURS["arena"]),
                 ("input+output", memory.get("io_bytes"), COLOURS["input"]),
                 ("other statics", memory.get("other_static_ram_bytes"), "#999999"),
                 ("stack", memory.get("stack_bytes"), COLOURS["scratch"])]
    flash_parts = [("weights", memory.get("weights_bytes"), COLOURS["arena"]),
                   ("code", memory.get("code_bytes"), COLOURS["output"])]
    for name, used, budget, parts in (
            ("RAM", memory.get("sram_bytes"), memory.get("ram_budget_bytes"), ram_parts),
            ("flash", memory.get("flash_bytes"), memory.get("flash_budget_bytes"),
             flash_parts)):
        if not used:
            continue
        full = max(budget or used, used)
        x, segments = 0.0, []
        for part, size, colour in parts:
            if size:
                width = PLOT_WIDTH * size / full
                segments.append(Segment(x, width, colour, f"{part}: {size:,} bytes"))
                x += width
        caption = f"{name}: {_kib(used)}"
        if budget:
            caption += (f" of {_kib(budget)} ({100 * used / budget:.1f}%; "
                        f"{_kib(budget - used)} left for the application)")
        bars.append(BudgetBar(name, used, budget, tuple(segments), caption))
    return bars


def render(report: dict) -> str:
    from mbgen.codegen.generator import environment
    rects, names, offsets, height = timeline(report)
    return environment().get_template("report/report.html.j2").render(
        report=report, rects=rects, names=names, offsets=offsets, left=LEFT,
        width=LEFT + PLOT_WIDTH + 20, height=height, arena_height=ARENA_HEIGHT,
        band_top=ARENA_HEIGHT + 10, band_height=BAND_HEIGHT, bars=budget_bars(report),
        bar_width=PLOT_WIDTH, colours=COLOURS,
        show_instructions=any("instructions" in layer for layer in report["layers"]))


def write_report(out_dir: Path, destination: Path | None = None) -> Path:
    """Write report.html (beside report.json unless ``destination`` is given)."""
    out_dir = Path(out_dir)
    report = _read_report(out_dir)
    path = Path(destination) if destination else out_dir / REPORT_HTML
    if path.exists() and not _ours(path):
        raise UserError(f"{path} exists and was not written by mbgen report; choose another "
                        "file with -o")
    path.write_text(render(report))
    return path


def _ours(path: Path) -> bool:
    try:
        return "<!-- written by mbgen report -->" in path.read_text(errors="replace")[:200]
    except OSError:
        return False
