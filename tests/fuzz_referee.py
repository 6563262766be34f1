"""The fuzz's referees: our pipeline plus a sanitized host build on one side, TFLM on the other.

``check_mutants`` sends each mutant through the CLI's pipeline (``compiler.prepare`` then
``compiler.emit`` for the host). A refusal must be a one-line ``UserError``; anything else
compiled is built with ASan and UBSan (``-fno-sanitize-recover``, objects cached by content),
run on two inputs, and compared with TFLM, which runs in a child process so that a mutant
crashing TFLM cannot take pytest with it. Where TFLM crashes on or refuses a mutant we compile,
the numpy reference (``mbgen.reference``, written from the spec) referees instead.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import multiprocessing
import os
import shutil
import subprocess
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mbgen.errors import UserError

SANITIZE = ("-std=c99", "-O1", "-Wall", "-Wextra", "-Werror", "-fno-omit-frame-pointer",
            "-fsanitize=address,undefined", "-fno-sanitize-recover=all")
RUN_ENV = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}

def _tflm_outputs(data: bytes, inputs: list[np.ndarray]):
    """In the child: TFLM's output for each input, or the reason it refused the model."""
    import faulthandler
    faulthandler.disable()  # a mutant that kills TFLM is counted, not dumped on stderr
    from mbgen.errors import RunFailure
    from mbgen.tflm import run_tflm
    try:
        return [run_tflm(data, x).reshape(-1) for x in inputs]
    except (RunFailure, UserError) as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    except Exception as exc:  # noqa: BLE001 - the wrapper itself fails on some mutants
        return f"the TFLM wrapper failed: {type(exc).__name__}"


class TflmReferee:
    """TFLM in one long-lived child process, restarted when a mutant crashes or hangs it."""

    def __init__(self):
        self.pool = None

    def run(self, data: bytes, inputs: list[np.ndarray]):
        """List of outputs; a string when TFLM refuses; None when TFLM crashed or hung."""
        if self.pool is None:
            self.pool = concurrent.futures.ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("fork"))
        try:
            return self.pool.submit(_tflm_outputs, data, inputs).result(timeout=60)
        except (concurrent.futures.process.BrokenProcessPool,
                concurrent.futures.TimeoutError):
            self.close()
            return None

    def close(self):
        if self.pool is not None:
            for process in list(getattr(self.pool, "_processes", {}).values()):
                process.kill()
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None


# ----------------------------------------------------------------------------- our side


class SanitizedBuilder:
    """Host builds under ASan+UBSan; objects cached by their source and headers' content (most
    mutants change model.c only)."""

    def __init__(self, cache: Path):
        self.cache = cache
        cache.mkdir(parents=True, exist_ok=True)
        self.cc = shutil.which("gcc") or shutil.which("cc")

    def build(self, folder: Path) -> tuple[Path | None, str]:
        headers = b"".join(p.read_bytes() for p in sorted(folder.glob("*.h")))
        objects = []
        for source in sorted(folder.glob("*.c")):
            key = hashlib.sha256(headers + source.read_bytes()).hexdigest()[:24]
            obj = self.cache / f"{key}.o"
            if not obj.exists():
                proc = subprocess.run([self.cc, *SANITIZE, "-I", str(folder), "-c", str(source),
                                       "-o", str(obj)], capture_output=True, text=True)
                if proc.returncode != 0:
                    return None, f"{source.name}: {proc.stderr.strip()[:600]}"
            objects.append(str(obj))
        exe = folder / "prog"
        proc = subprocess.run([self.cc, "-fsanitize=address,undefined", *objects, "-o",
                               str(exe)], capture_output=True, text=True)
        if proc.returncode != 0:
            return None, f"link: {proc.stderr.strip()[:600]}"
        return exe, ""


def _run_exe(exe: Path, x: np.ndarray, work: Path) -> tuple[np.ndarray | None, str]:
    src, dst = work / "in.bin", work / "out.bin"
    src.write_bytes(x.tobytes())
    dst.unlink(missing_ok=True)
    proc = subprocess.run([str(exe), str(src), str(dst)], capture_output=True, text=True,
                          timeout=60, env=RUN_ENV)
    if proc.returncode != 0:
        return None, f"exit {proc.returncode}: {proc.stderr.strip()[-1500:]}"
    return np.frombuffer(dst.read_bytes(), np.int8), ""


def _inputs(graph, seed: int) -> list[np.ndarray]:
    t = graph.tensors[graph.inputs[0]]
    rng = np.random.default_rng(seed)
    dtype = np.uint8 if t.dtype == "uint8" else np.int8
    info = np.iinfo(dtype)
    return [rng.integers(info.min, info.max + 1, t.shape).astype(dtype),
            rng.choice(np.array([info.min, info.max], dtype), t.shape)]


@dataclass
class FuzzRun:
    """Outcome counts and every failure, for one batch of mutants."""

    counts: Counter
    failures: list[str]
    notes: list[str]     # mutants we compile and TFLM refuses or crashes on


def check_mutants(samples: list[tuple[str, bytes]], work: Path,
                  referee: TflmReferee, builder: SanitizedBuilder,
                  stream: bool = True) -> FuzzRun:
    """Compile every sample for the host (``stream``: with the streaming pass, as compile
    does by default), build it with the sanitizers and compare it with TFLM."""
    from mbgen import compiler
    counts: Counter = Counter()
    failures: list[str] = []
    notes: list[str] = []
    path = work / "mutant.tflite"
    for index, (what, data) in enumerate(samples):
        label = f"mutant {index} ({what})"
        path.write_bytes(data)
        out = work / f"out{index}"
        try:
            prepared = compiler.prepare(str(path), compiler.CompileOptions())
            compiler.emit(prepared, compiler.CompileOptions(target="host", out_dir=out,
                                                            stream=stream))
        except UserError as exc:
            if "\n" in str(exc) or not str(exc):
                failures.append(f"{label}: message not one line: {exc!r}")
            counts["refused"] += 1
            continue
        except Exception as exc:  # noqa: BLE001 - exactly what the fuzz hunts for
            where = traceback.extract_tb(exc.__traceback__)[-1]
            failures.append(f"{label}: {type(exc).__name__}: {str(exc)[:200]} at "
                            f"{Path(where.filename).name}:{where.lineno}")
            counts["crashed"] += 1
            continue
        exe, error = builder.build(out)
        if exe is None:
            failures.append(f"{label}: sanitizer build failed: {error}")
            counts["build failed"] += 1
            shutil.rmtree(out)
            continue
        inputs = _inputs(prepared.graph, seed=index)
        ours = []
        for x in inputs:
            got, error = _run_exe(exe, x, work)
            if got is None:
                failures.append(f"{label}: the C fails under the sanitizers: {error}")
                break
            ours.append(got)
        shutil.rmtree(out)
        if len(ours) < len(inputs):
            counts["sanitizer report"] += 1
            continue
        theirs = referee.run(data, inputs)
        if theirs is None or isinstance(theirs, str):
            # No TFLM answer: the numpy reference (written from the spec) referees instead.
            why = "crashed or hung" if theirs is None else f"refused: {theirs[:200]}"
            verdict = _against_reference(prepared.graph, inputs, ours)
            counts[f"compiled, TFLM {why.split(':')[0]}, {verdict} reference"] += 1
            notes.append(f"{label}: TFLM {why}")
            if verdict != "equal to":
                failures.append(f"{label}: TFLM {why} and we differ from the reference")
        elif all(np.array_equal(a.view(np.uint8), b.view(np.uint8).reshape(-1))
                 for a, b in zip(ours, theirs)):
            counts["compiled, equal to TFLM"] += 1
        else:
            counts["compiled, differs from TFLM"] += 1
            failures.append(f"{label}: differs from TFLM: ours {ours[0][:8]} "
                            f"TFLM {theirs[0][:8]}")
    return FuzzRun(counts, failures, notes)


def _against_reference(graph, inputs: list[np.ndarray], ours: list[np.ndarray]) -> str:
    from mbgen.reference import run_int8
    want = [run_int8(graph, x)[graph.outputs[0]].reshape(-1) for x in inputs]
    same = all(np.array_equal(a.view(np.uint8), b.view(np.uint8)) for a, b in zip(ours, want))
    return "equal to" if same else "differs from"
