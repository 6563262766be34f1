"""The cmsis-nn kernel set's records: mirrors of the CMSIS-NN structs (arm_nn_types.h, field
names the library's) and the call records its templates print (``kernels_cmsis_nn``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Union

from mbgen.codegen.records import BufferRef, ConstArray


@dataclass(frozen=True)
class Dims:
    """cmsis_nn_dims: n is the batch, or the output channels of a conv filter."""

    n: int
    h: int
    w: int
    c: int


@dataclass(frozen=True)
class Tile:
    """cmsis_nn_tile (stride, padding, dilation). Padding is the top/left one: CMSIS-NN
    derives the bottom/right pad from the output size, as TFLM's kernels do."""

    w: int
    h: int


@dataclass(frozen=True)
class Clamp:
    """cmsis_nn_activation: the fused activation's int8 range."""

    min: int
    max: int


@dataclass(frozen=True)
class ConvParams:
    """cmsis_nn_conv_params; input_offset = -input zero point, output_offset = its zero point."""

    c_type: ClassVar[str] = "cmsis_nn_conv_params"
    input_offset: int
    output_offset: int
    stride: Tile
    padding: Tile
    dilation: Tile
    activation: Clamp


@dataclass(frozen=True)
class DwConvParams:
    c_type: ClassVar[str] = "cmsis_nn_dw_conv_params"
    input_offset: int
    output_offset: int
    ch_mult: int
    stride: Tile
    padding: Tile
    dilation: Tile
    activation: Clamp


@dataclass(frozen=True)
class FcParams:
    input_offset: int
    filter_offset: int   # 0: int8 weights are symmetric
    output_offset: int
    activation: Clamp


@dataclass(frozen=True)
class PoolParams:
    stride: Tile
    padding: Tile
    activation: Clamp


@dataclass(frozen=True)
class Context:
    """cmsis_nn_context: the layer's scratch buffer in the arena (None when it needs none)."""

    buffer: BufferRef | None
    size: int


@dataclass(frozen=True)
class CmsisConvCall:
    """arm_convolve_wrapper_s8 / arm_convolve_1x1_s8_fast, or (with DwConvParams)
    arm_depthwise_conv_wrapper_s8 / arm_depthwise_conv_3x3_s8: the same argument list."""

    template: ClassVar[str] = "kernels_cmsis_nn/conv.c.j2"
    function: str
    context: Context
    conv_params: ConvParams | DwConvParams
    input: BufferRef
    input_dims: Dims
    filter_dims: Dims
    weights: ConstArray        # conv (out_c, k_h, k_w, in_c); depthwise (1, k_h, k_w, out_c)
    bias_dims: Dims
    bias: ConstArray           # int32 (out_c,), zeros when the layer has none
    output_dims: Dims
    output: BufferRef
    multipliers: ConstArray    # one per output channel
    shifts: ConstArray


@dataclass(frozen=True)
class CmsisFullyConnectedCall:
    template: ClassVar[str] = "kernels_cmsis_nn/fully_connected.c.j2"
    function: ClassVar[str] = "arm_fully_connected_s8"
    context: Context
    fc_params: FcParams
    multiplier: int            # per tensor
    shift: int
    input: BufferRef
    input_dims: Dims
    filter_dims: Dims          # n = accumulation depth, c = output depth
    weights: ConstArray        # (out_features, in_features)
    bias_dims: Dims
    bias: ConstArray
    output_dims: Dims
    output: BufferRef


@dataclass(frozen=True)
class CmsisAvgPoolCall:
    template: ClassVar[str] = "kernels_cmsis_nn/pool.c.j2"
    function: ClassVar[str] = "arm_avgpool_s8"
    context: Context
    pool_params: PoolParams
    input: BufferRef
    input_dims: Dims
    filter_dims: Dims          # h, w = the pooling window
    output_dims: Dims
    output: BufferRef


@dataclass(frozen=True)
class CmsisAddCall:
    """arm_elementwise_add_s8: TFLite's ADD (offsets are -zero points, shifts <= 0)."""

    template: ClassVar[str] = "kernels_cmsis_nn/add.c.j2"
    function: ClassVar[str] = "arm_elementwise_add_s8"
    input1: BufferRef
    input2: BufferRef
    output: BufferRef
    input1_offset: int
    input1_multiplier: int
    input1_shift: int
    input2_offset: int
    input2_multiplier: int
    input2_shift: int
    left_shift: int
    output_offset: int
    output_multiplier: int
    output_shift: int
    act_min: int
    act_max: int
    block_size: int


@dataclass(frozen=True)
class CmsisSoftmaxCall:
    template: ClassVar[str] = "kernels_cmsis_nn/softmax.c.j2"
    function: ClassVar[str] = "arm_softmax_s8"
    input: BufferRef
    output: BufferRef
    num_rows: int
    row_size: int
    multiplier: int
    shift: int                 # the input left shift, in [0, 31]
    diff_min: int


CmsisCall = Union[CmsisConvCall, CmsisFullyConnectedCall, CmsisAvgPoolCall, CmsisAddCall,
                  CmsisSoftmaxCall]
