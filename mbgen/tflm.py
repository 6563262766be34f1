"""TFLM (TensorFlow Lite for Microcontrollers) as an independent reference.

Runs .tflite files with the real TFLM interpreter of the ``tflite-micro`` wheel (a host build
with TFLM's reference kernels): ``run_tflm`` for outputs, ``run_tflm_tensors`` for every
tensor (to find the first layer where two implementations part ways) and ``tflm_arena_bytes``
for the arena TFLM needs, to print next to ours.

TFLM's C++ code reports problems on the process's stderr; we capture that stream around every
call, so messages end up in our exceptions instead of in the user's terminal.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from mbgen.errors import RunFailure, UserError

ModelSource = str | Path | bytes


def _runtime():
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError:
        raise UserError("the TFLM reference needs the tflite-micro package: "
                        "pip install tflite-micro") from None
    return runtime


def _model_bytes(model: ModelSource) -> bytes:
    if isinstance(model, bytes):
        return model
    try:
        return Path(model).read_bytes()
    except OSError as exc:
        raise UserError(f"{model}: cannot read the model file ({exc.strerror or exc})") from None


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Redirect file descriptor 2 (where TFLM's C++ logs) into a list of lines."""
    lines: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            saved = os.dup(2)
        except OSError:  # no usable stderr: nothing to capture
            yield lines
            return
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read().decode("utf-8", "replace").splitlines())


def _first_message(lines: list[str], exc: Exception) -> str:
    useful = [line.strip() for line in lines if line.strip()]
    return "; ".join(useful[:3]) or str(exc)


def _interpreter(data: bytes, arena_size: int | None, preserve_all: bool = False):
    runtime = _runtime()
    if arena_size is None:
        arena_size = _generous_arena(data)
    config = (runtime.InterpreterConfig.kPreserveAllTensors if preserve_all
              else runtime.InterpreterConfig.kAllocationRecording)
    return runtime.Interpreter.from_bytes(data, arena_size=arena_size,
                                          intrepreter_config=config)


def _as_inputs(inputs: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(inputs, np.ndarray):
        return [inputs]
    return [np.asarray(x) for x in inputs]


def _invoke(interpreter, inputs: list[np.ndarray], label: str) -> None:
    for index, value in enumerate(inputs):
        details = interpreter.get_input_details(index)
        shape = tuple(int(d) for d in details["shape"])
        dtype = np.dtype(details["dtype"])
        if value.dtype != dtype:
            raise UserError(f"{label}: input {index} must be {dtype}, got {value.dtype}")
        if value.size != int(np.prod(shape)):
            raise UserError(f"{label}: input {index} must have shape {shape}, "
                            f"got {value.shape}")
        interpreter.set_input(np.ascontiguousarray(value.reshape(shape)), index)
    interpreter.invoke()


def _label(model: ModelSource) -> str:
    return "model bytes" if isinstance(model, bytes) else Path(model).name


def run_tflm_outputs(model: ModelSource, inputs: np.ndarray | Sequence[np.ndarray],
                     arena_size: int | None = None) -> list[np.ndarray]:
    """Run the model once in TFLM; every output, in the model's output order."""
    data, label = _model_bytes(model), _label(model)
    values = _as_inputs(inputs)
    with _captured_stderr() as log:
        try:
            interpreter = _interpreter(data, arena_size)
            _invoke(interpreter, values, label)
            count = len(_output_indices(data))
            return [np.array(interpreter.get_output(i)) for i in range(count)]
        except (RuntimeError, ValueError) as exc:
            failure = exc
    raise RunFailure(f"TFLM could not run {label}: {_first_message(log, failure)}")


def run_tflm(model: ModelSource, input_int8: np.ndarray | Sequence[np.ndarray],
             arena_size: int | None = None) -> np.ndarray:
    """Run the model once in TFLM and return its first output."""
    return run_tflm_outputs(model, input_int8, arena_size)[0]


def run_tflm_tensors(model: ModelSource,
                     inputs: np.ndarray | Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Run the model once, keeping every tensor; returns {tensor name in the file: value}.

    Constant tensors are included. For locating the first layer where TFLM and another
    implementation disagree."""
    data, label = _model_bytes(model), _label(model)
    names = _tensor_names(data)
    with _captured_stderr() as log:
        try:
            interpreter = _interpreter(data, None, preserve_all=True)
            _invoke(interpreter, _as_inputs(inputs), label)
            result = {}
            for index, name in enumerate(names):
                entry = interpreter.GetTensor(index, 0)
                result[name] = np.array(entry["tensor_data"]).reshape(
                    tuple(int(d) for d in entry["shape"]))
            return result
        except (RuntimeError, ValueError) as exc:
            failure = exc
    raise RunFailure(f"TFLM could not run {label}: {_first_message(log, failure)}")


def _read_root(data: bytes):
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema
    return schema.Model.GetRootAsModel(data, 0)


def _subgraph(data: bytes):
    try:
        return _read_root(data).Subgraphs(0)
    except Exception as exc:  # noqa: BLE001 - bad bytes; TFLM would refuse them as well
        raise UserError(f"not a readable TFLite model ({type(exc).__name__})") from None


def _generous_arena(data: bytes) -> int:
    """Enough arena for any run: every non-constant tensor side by side, plus TFLM's own
    bookkeeping (the wrapper's default of 10x the file size is too small for models with
    few weights and large activations)."""
    sub = _subgraph(data)
    model = _read_root(data)
    activations = 0
    for i in range(sub.TensorsLength()):
        t = sub.Tensors(i)
        if model.Buffers(t.Buffer()).DataLength() == 0:
            activations += int(np.prod(t.ShapeAsNumpy(), dtype=np.int64)) * 4 + 16
    return 10 * len(data) + 2 * activations + (64 << 10)


def _output_indices(data: bytes) -> list[int]:
    return [int(i) for i in _subgraph(data).OutputsAsNumpy()]


def _tensor_names(data: bytes) -> list[str]:
    sub = _subgraph(data)
    return [(sub.Tensors(i).Name() or b"").decode("utf-8", "replace")
            for i in range(sub.TensorsLength())]


_ARENA_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")


def tflm_arena_bytes(model: ModelSource) -> int:
    """The arena TFLM needs for the model: its RecordingMicroAllocator's allocation total
    after one invoke with a generous arena.

    For the shared models MODELS.md found this equal to the smallest ``arena_size`` that works
    (bisection to the byte). We do not bisect ourselves: TFLM crashes the process (SIGSEGV)
    instead of failing cleanly at some too-small sizes for models with ADD, e.g. MobileNetV2.
    Host build with reference kernels: CMSIS-NN kernels on a Cortex-M ask for other scratch
    buffers. Cached per model content."""
    data = _model_bytes(model)
    digest = hashlib.sha256(data).hexdigest()
    if digest not in _ARENA_CACHE:
        _ARENA_CACHE[digest] = _recorded_arena(data, _label(model))
    return _ARENA_CACHE[digest]


_ARENA_CACHE: dict[str, int] = {}


def _recorded_arena(data: bytes, label: str) -> int:
    failure: Exception | None = None
    with _captured_stderr() as log:
        try:
            interpreter = _interpreter(data, None)
            inputs = []
            for index in range(len(_subgraph(data).InputsAsNumpy())):
                details = interpreter.get_input_details(index)
                inputs.append(np.zeros(tuple(int(d) for d in details["shape"]),
                                       dtype=details["dtype"]))
            _invoke(interpreter, inputs, label)
            interpreter.print_allocations()
        except (RuntimeError, ValueError) as exc:
            failure = exc
    if failure is not None:
        raise RunFailure(f"TFLM could not run {label}: {_first_message(log, failure)}")
    totals = [int(m.group(1)) for line in log for m in [_ARENA_TOTAL.search(line)] if m]
    if not totals:
        raise RunFailure(f"TFLM did not report its arena for {label}")
    return totals[-1]
