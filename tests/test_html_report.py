"""`mbgen report OUT`: the memory picture names every layer and draws every buffer where the
plan put it; the budget bars and the layer table are there."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from mbgen.compiler import CompileOptions, emit
from mbgen.errors import UserError
from mbgen.html_report import write_report


class _Svg(HTMLParser):
    """Collects the timeline's buffer rectangles (with their titles) and layer labels."""

    def __init__(self) -> None:
        super().__init__()
        self.rects: list[dict] = []
        self.layer_labels: list[str] = []
        self.budget_bars = 0
        self.table_rows = 0
        self.stage_rows = 0
        self._in: str | None = None
        self._table: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "rect" and a.get("class") == "buffer":
            self.rects.append({**a, "title": ""})
            self._in = "rect"
        elif tag == "title" and self._in == "rect":
            self._in = "title"
        elif tag == "text" and a.get("class") == "layer":
            self.layer_labels.append("")
            self._in = "layer"
        elif tag == "svg" and a.get("class") == "budget":
            self.budget_bars += 1
        elif tag == "table":
            self._table = a.get("class")
        elif tag == "tr" and self._table == "stage":
            self.stage_rows += 1
        elif tag == "tr":
            self.table_rows += 1

    def handle_data(self, data):
        if self._in == "title":
            self.rects[-1]["title"] += data
        elif self._in == "layer":
            self.layer_labels[-1] += data

    def handle_endtag(self, tag):
        if tag in ("title", "text"):
            self._in = None if tag == "text" or self._in != "title" else "rect"
        if tag == "rect":
            self._in = None


def test_report_pictures_the_plan(prepared, tmp_path):
    model = prepared("mbv2_0.35_96")
    graph = model.graph
    compiled = emit(model, CompileOptions(target="cortex-m7", kernels="portable",
                                          out_dir=tmp_path / "out", flash_bytes=1 << 24))
    report, plan = compiled.report, compiled.plan
    page = _Svg()
    page.feed(write_report(tmp_path / "out").read_text())
    names = [layer["name"] for layer in report["layers"]]   # a streamed stage is one layer
    # Every layer is named under the picture, in order.
    assert [label.split(" ", 1)[1] for label in page.layer_labels] == names
    # One rectangle per planned buffer, each at its arena offset (residuals included).
    assert len(page.rects) == len(report["buffers"]) == \
        len(plan.lifetimes) + len(plan.scratch_offsets)   # streamed stages' windows too
    arena_rects = [r for r in page.rects if "arena offset" in r["title"]]
    scale = 320 / plan.arena_size
    for rect, buffer in zip(page.rects, report["buffers"]):
        assert buffer["layer"] in rect["title"]
        if buffer["offset"] is not None:
            assert float(rect["y"]) == pytest.approx(buffer["offset"] * scale, abs=0.01)
    assert arena_rects and page.table_rows == len(names) + 1
    assert page.budget_bars == 2  # RAM and flash of the Cortex-M7 budget
    # Its own page it rewrites; anything else it refuses to overwrite.
    write_report(tmp_path / "out")
    (tmp_path / "mine.html").write_text("<html>mine</html>")
    with pytest.raises(UserError, match="not written by mbgen"):
        write_report(tmp_path / "out", tmp_path / "mine.html")
    assert (tmp_path / "mine.html").read_text() == "<html>mine</html>"


def test_report_marks_streamed_stages_and_lists_their_layers(prepared, tmp_path):
    """mbv1_0.25_128 on M7 streams its first blocks by default: the stage's output and row
    windows are drawn in the streamed colour, and its layers are listed with their windows
    and recompute."""
    from mbgen.html_report import COLOURS
    compiled = emit(prepared("mbv1_0.25_128"), CompileOptions(target="cortex-m7",
                                                              out_dir=tmp_path / "out"))
    stages = compiled.report["streaming"]
    assert stages
    page = _Svg()
    page.feed(write_report(tmp_path / "out").read_text())
    streamed = [r for r in page.rects if r["fill"] == COLOURS["streamed"]]
    made_by_stage = [b for b in compiled.report["buffers"]
                     if b["layer"] in {s["name"] for s in stages}]
    assert len(streamed) == len(made_by_stage) >= 2 * len(stages)   # output + windows each
    assert all("streamed stage of" in r["title"] for r in streamed)
    assert page.stage_rows == sum(len(s["layers"]) + 1 for s in stages)


def test_report_needs_a_generated_folder(tmp_path):
    with pytest.raises(UserError, match="report.json"):
        write_report(tmp_path)
