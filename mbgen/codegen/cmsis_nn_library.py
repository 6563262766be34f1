"""Building with the real CMSIS-NN: where its sources are (``--cmsis-nn`` or
$CMSIS_NN_PATH), which of them a cmsis-nn folder needs, and the flags it adds."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mbgen.errors import UserError

NAME = "cmsis-nn"            # the kernel set whose folders need the library
ENV_VAR = "CMSIS_NN_PATH"

# The public functions the generated code calls, as CMSIS-NN v6+ lays out its sources. A
# library root must have them (tests/cmsis_nn_standin/ mirrors this layout).
ENTRY_SOURCES = (
    "Source/ConvolutionFunctions/arm_convolve_wrapper_s8.c",
    "Source/ConvolutionFunctions/arm_convolve_1x1_s8_fast.c",
    "Source/ConvolutionFunctions/arm_depthwise_conv_wrapper_s8.c",
    "Source/ConvolutionFunctions/arm_depthwise_conv_3x3_s8.c",
    "Source/FullyConnectedFunctions/arm_fully_connected_s8.c",
    "Source/PoolingFunctions/arm_avgpool_s8.c",
    "Source/BasicMathFunctions/arm_elementwise_add_s8.c",
    "Source/SoftmaxFunctions/arm_softmax_s8.c",
)
# What those call inside CMSIS-NN (v7.0) outside Helium: compiled when present.
SUPPORT_SOURCES = (
    "Source/ConvolutionFunctions/arm_convolve_s8.c",
    "Source/ConvolutionFunctions/arm_convolve_1x1_s8.c",
    "Source/ConvolutionFunctions/arm_convolve_1_x_n_s8.c",
    "Source/ConvolutionFunctions/arm_convolve_get_buffer_sizes_s8.c",
    "Source/ConvolutionFunctions/arm_depthwise_conv_s8.c",
    "Source/ConvolutionFunctions/arm_depthwise_conv_s8_opt.c",
    "Source/ConvolutionFunctions/arm_depthwise_conv_get_buffer_sizes_s8.c",
    "Source/ConvolutionFunctions/arm_nn_mat_mult_kernel_s8_s16.c",
    "Source/ConvolutionFunctions/arm_nn_mat_mult_kernel_row_offset_s8_s16.c",
    "Source/FullyConnectedFunctions/arm_fully_connected_get_buffer_sizes_s8.c",
    "Source/PoolingFunctions/arm_avgpool_get_buffer_sizes_s8.c",
    "Source/SoftmaxFunctions/arm_nn_softmax_common_s8.c",
    "Source/NNSupportFunctions/arm_nn_mat_mult_nt_t_s8.c",
    "Source/NNSupportFunctions/arm_nn_vec_mat_mult_t_s8.c",
    "Source/NNSupportFunctions/arm_q7_to_q15_with_offset.c",
    "Source/NNSupportFunctions/arm_s8_to_s16_unordered_with_offset.c",
)


@dataclass(frozen=True)
class LibraryBuild:
    """What the runner adds to a build of a cmsis-nn folder."""

    root: Path
    sources: tuple[Path, ...]
    include_dirs: tuple[Path, ...]
    cflags: tuple[str, ...] = ()


def library_root(path: str | os.PathLike | None = None) -> Path:
    """``path`` (--cmsis-nn), else $CMSIS_NN_PATH; UserError when there is none or it is not
    a CMSIS-NN source tree."""
    given = path if path is not None else os.environ.get(ENV_VAR) or None
    if given is None:
        raise UserError(f"this folder calls CMSIS-NN (--kernels {NAME}): building it needs the "
                        f"CMSIS-NN v6+ sources; set {ENV_VAR} (or give mbgen bench --cmsis-nn) "
                        "to a checkout of https://github.com/ARM-software/CMSIS-NN")
    root = Path(given).expanduser()
    if not (root / "Include" / "arm_nnfunctions.h").is_file():
        raise UserError(f"{root} is not a CMSIS-NN source tree (no Include/arm_nnfunctions.h); "
                        f"point --cmsis-nn or {ENV_VAR} at a CMSIS-NN v6+ checkout")
    missing = [s for s in ENTRY_SOURCES if not (root / s).is_file()]
    if missing:
        raise UserError(f"CMSIS-NN at {root} lacks {missing[0]}; mbgen needs CMSIS-NN v6 or "
                        "later")
    return root.resolve()


def library_build(target, path: str | os.PathLike | None = None) -> LibraryBuild:
    """The CMSIS-NN headers and sources to build a cmsis-nn folder for ``target``.

    On Helium cores (Cortex-M55) CMSIS-NN switches to MVE code paths that want other scratch
    buffers (kernel sums) than the DSP ones sized at generation time, so such a firmware is
    built with MVE off (``-mcpu=<core>+nomve``): CMSIS-NN's DSP path on the same core.
    """
    root = library_root(path)
    sources = [root / s for s in ENTRY_SOURCES]
    sources += [root / s for s in SUPPORT_SOURCES if (root / s).is_file()]
    return LibraryBuild(root, tuple(sources), (root / "Include",), core_cflags(target))


def core_cflags(target) -> tuple[str, ...]:
    """Flags a cmsis-nn folder adds after the target's: MVE off on Helium cores."""
    return (f"-mcpu={target.core}+nomve",) if getattr(target, "mve", False) else ()


def uses_library(report: dict) -> bool:
    """True when a folder's report.json has layers that call CMSIS-NN."""
    return any(layer.get("kernel") == NAME for layer in report.get("layers", []))
