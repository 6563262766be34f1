"""`mbgen run OUT --image photo.jpg`: a photo in, labelled top-K scores out.

The folder's report.json says how to turn pixels into the model's input (``preprocessing``,
recorded at compile time) and what the input and output buffers hold (``interface``: shape,
int8 or uint8, scale, zero point). Scores are the dequantised outputs: probabilities when the
model ends in a softmax (or logistic), raw scores (logits) otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mbgen.errors import UserError
from mbgen.preprocessing import Interface, Preprocessing
from mbgen.runner.folder import read_report

PROBABILITY_OPS = ("Softmax", "Logistic")


@dataclass(frozen=True)
class FolderIO:
    preprocessing: Preprocessing
    input: Interface
    output: Interface
    output_op: str

    @property
    def scores_are_probabilities(self) -> bool:
        return self.output_op in PROBABILITY_OPS


def folder_io(out_dir: Path) -> FolderIO:
    report = read_report(out_dir)
    interface = report.get("interface")
    if not isinstance(interface, dict):
        raise UserError(f"{out_dir}/report.json has no input description; compile the model "
                        "again with this mbgen to use --image")
    return FolderIO(Preprocessing.from_report(report.get("preprocessing")),
                    Interface.from_report(interface["input"]),
                    Interface.from_report(interface["output"]),
                    str(interface.get("output_op", "")))


def image_input(io: FolderIO, image: Path) -> bytes:
    """The photo as the bytes ``<name>_invoke`` reads."""
    return io.preprocessing.image_input(image, io.input).tobytes()


def read_labels(path: Path, classes: int) -> list[str]:
    """One label per line. A file one line short of the classes (ImageNet's 1000 names for a
    1001-class model) gets 'background' at index 0, as TF's MobileNets number them."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read labels {path}: {getattr(exc, 'strerror', None) or exc}"
                        ) from None
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) == classes - 1:
        lines = ["background"] + lines
    if len(lines) != classes:
        raise UserError(f"labels {path} has {len(lines)} lines but the model has {classes} "
                        "classes")
    return [line.strip() for line in lines]


@dataclass(frozen=True)
class Ranked:
    index: int
    raw: int          # the output element as the C returned it
    score: float      # dequantised
    label: str | None

    def as_json(self) -> dict:
        return {"index": self.index, "label": self.label, "raw": self.raw, "score": self.score}


def top_k(io: FolderIO, output: bytes, k: int, labels: list[str] | None) -> list[Ranked]:
    """The k largest outputs, ties broken by the lower index (as TFLM's examples do)."""
    values = np.frombuffer(output, dtype=io.output.dtype).astype(np.int64)
    scores = io.output.dequantize(values)
    order = np.argsort(-values, kind="stable")[:max(k, 0)]
    return [Ranked(int(i), int(values[i]), float(scores[i]),
                   labels[i] if labels is not None else None) for i in order]


def format_ranked(io: FolderIO, ranked: list[Ranked]) -> list[str]:
    what = "probability" if io.scores_are_probabilities else "score"
    width = max((len(r.label) for r in ranked if r.label), default=0)
    lines = []
    for place, r in enumerate(ranked, 1):
        label = f"  {r.label:<{width}}" if r.label is not None else ""
        lines.append(f"  {place}. [{r.index}]{label}  {what} {r.score:.4f} (raw {r.raw})")
    return lines
