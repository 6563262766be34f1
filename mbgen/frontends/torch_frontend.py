"""PyTorch models (nn.Module via torch.fx, or torch.export .pt2 files) to float IR graphs.

Both entry points reduce every layer to one small vocabulary of "canonical calls" named like
the ATen ops they correspond to (``convolution``, ``batch_norm``, ``hardtanh``, ``add``, ...)
with arguments named as in the ATen schemas; handlers turn those into IR nodes. The handlers
of the classic layers live in ``torch_layers``, of the squeeze-excitation ops (sigmoid,
multiplication) in ``torch_elementwise``, of hard sigmoid / hard swish in all their spellings
in ``torch_hard_activations``; ``torch_values`` holds the values, calls and builder they share.

* :func:`from_module` traces with ``torch.fx.symbolic_trace``; leaf modules (``nn.Conv2d``,
  ``nn.BatchNorm2d``, ...) and functional calls (``F.relu``, ``x + y``, ``x.mean(...)``) are
  mapped to canonical calls.
* :func:`load_pt2` walks the ATen graph of a ``torch.export`` program, either as exported
  (``aten.conv2d``, ``aten.batch_norm``, ``aten.linear``) or decomposed to core ATen
  (``aten.convolution``, ``aten._native_batch_norm_legit_no_training``, ``aten.addmm``).

The output follows ``mbgen.ir``: float32, NHWC activations, TFLite weight layouts, explicit
padding, BatchNorm kept as ``ir.BatchNorm`` (the passes fold it), Dropout as ``ir.Identity``.
Tensor shapes come from running the model once on the example input (fx ShapeProp) or from
the shapes torch.export recorded, so they always agree with what PyTorch computes.
"""

from __future__ import annotations

import operator
from dataclasses import replace
from pathlib import Path

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from mbgen import ir
from mbgen.errors import UserError
from mbgen.frontends import (torch_elementwise, torch_graph_ops, torch_hard_activations,
                             torch_layers)
from mbgen.frontends.zero_pads import fold_zero_pads
from mbgen.frontends.torch_values import Builder, Call, Value, contains_activation, unsupported

# ----------------------------------------------------------------------------- conversion


def _convert(b: Builder, call: Call, preferred_name: str) -> object:
    name = b.unique_node_name(preferred_name)
    shuffle = torch_graph_ops.advance(b, call, name)  # channel shuffle's 5-D view
    if shuffle is not None:
        return shuffle
    if torch_hard_activations.involved(call):
        result = torch_hard_activations.advance(b, call, name)
        if result is not None:
            return result
        call = replace(call, args={k: torch_hard_activations.materialize(b, v)
                                   for k, v in call.args.items()})
    handler = torch_layers.HANDLERS.get(call.op)
    if handler is None:
        raise unsupported(call, "this operation has no mbgen equivalent")
    return handler(b, call, name)


_CONTAINERS = ("nn.Sequential", "nn.ModuleList", "nn.ModuleDict")


def _node_name(layer: str, module_type: str, op: str) -> str:
    """IR node name: the layer's module path, or '<enclosing module>.<op>' for functional code
    inside a composite module (e.g. the residual 'features.3.add')."""
    if not layer:
        return op
    if module_type.startswith("nn.") and module_type not in _CONTAINERS:
        return layer
    return f"{layer}.{op}"


# ----------------------------------------------------------------------------- ATen vocabulary

# ATen op name (in-place '_' stripped) -> canonical op. Arguments keep their schema names.
_ATEN_OPS = {
    "conv2d": "convolution", "convolution": "convolution",
    "batch_norm": "batch_norm", "_native_batch_norm_legit_no_training": "batch_norm",
    "relu": "relu", "relu6": "relu6", "hardtanh": "hardtanh", "clamp": "clamp",
    "clamp_min": "clamp", "hardswish": "hardswish",
    "add": "add",
    "mean": "mean", "adaptive_avg_pool2d": "adaptive_avg_pool2d",
    "_adaptive_avg_pool2d": "adaptive_avg_pool2d", "avg_pool2d": "avg_pool2d",
    "view": "reshape", "reshape": "reshape", "_unsafe_view": "reshape", "flatten": "reshape",
    "squeeze": "reshape", "unsqueeze": "reshape",
    "linear": "linear", "addmm": "addmm", "mm": "mm",
    "dropout": "identity", "native_dropout": "identity", "feature_dropout": "identity",
    "clone": "identity", "alias": "identity", "detach": "identity", "contiguous": "identity",
    "lift_fresh_copy": "identity",
    **torch_elementwise.ATEN_OPS,
    **torch_hard_activations.ATEN_OPS,
    **torch_graph_ops.ATEN_OPS,
}

# Ops that only check shapes or metadata at run time: no data flows through them.
_ATEN_CHECKS = {"_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range",
                "sym_constrain_range_for_size", "_assert_async"}

# Canonical ops whose ATen form returns a tuple (output, saved statistics...).
_TUPLE_RESULTS = {"_native_batch_norm_legit_no_training", "native_dropout",
                  *torch_graph_ops.TUPLE_RESULTS}


def _bind_aten(target: torch._ops.OpOverload, args: tuple, kwargs: dict) -> dict[str, object]:
    bound: dict[str, object] = {}
    for i, spec in enumerate(target._schema.arguments):
        if i < len(args) and not spec.kwarg_only:
            bound[spec.name] = args[i]
        elif spec.name in kwargs:
            bound[spec.name] = kwargs[spec.name]
        elif spec.has_default_value():
            bound[spec.name] = spec.default_value
    # Dialect differences: conv's input is 'input' everywhere, everything else uses 'self'.
    if "input" in bound and "self" not in bound and target._opname not in (
            "conv2d", "convolution", "batch_norm", "_native_batch_norm_legit_no_training",
            "linear"):
        bound["self"] = bound.pop("input")
    if target._opname == "dropout" and bound.get("train"):
        bound["training"] = True
    return bound


def _aten_name(target: object) -> str | None:
    if isinstance(target, torch._ops.OpOverload) and target.namespace == "aten":
        name = target._opname
        return name[:-1] if name.endswith("_") and not name.startswith("_") else name
    return None


# ----------------------------------------------------------------------------- fx vocabulary

# Functional calls seen by symbolic_trace: target -> (canonical op, positional argument names).
_FX_FUNCTIONS: dict[object, tuple[str, tuple[str, ...]]] = {
    operator.add: ("add", ("self", "other")),
    operator.iadd: ("add", ("self", "other")),
    torch.add: ("add", ("self", "other")),
    F.relu: ("relu", ("self",)),
    torch.relu: ("relu", ("self",)),
    F.relu6: ("relu6", ("self",)),
    F.hardtanh: ("hardtanh", ("self", "min_val", "max_val")),
    torch.clamp: ("clamp", ("self", "min", "max")),
    F.hardswish: ("hardswish", ("self",)),
    torch.flatten: ("reshape", ("self",)),
    torch.reshape: ("reshape", ("self",)),
    torch.mean: ("mean", ("self", "dim", "keepdim")),
    F.adaptive_avg_pool2d: ("adaptive_avg_pool2d", ("self", "output_size")),
    F.avg_pool2d: ("avg_pool2d", ("self", "kernel_size", "stride", "padding", "ceil_mode",
                                  "count_include_pad", "divisor_override")),
    F.dropout: ("identity", ("self", "p", "training")),
    F.conv2d: ("convolution", ("input", "weight", "bias", "stride", "padding", "dilation",
                               "groups")),
    F.linear: ("linear", ("input", "weight", "bias")),
    F.batch_norm: ("batch_norm", ("input", "running_mean", "running_var", "weight", "bias",
                                  "training", "momentum", "eps")),
    **torch_elementwise.FX_FUNCTIONS,
    **torch_hard_activations.FX_FUNCTIONS,
    **torch_graph_ops.FX_FUNCTIONS,
}

_FX_METHODS: dict[str, tuple[str, tuple[str, ...]]] = {
    "add": ("add", ("self", "other")), "add_": ("add", ("self", "other")),
    "relu": ("relu", ()), "relu_": ("relu", ()),
    "clamp": ("clamp", ("min", "max")), "clamp_": ("clamp", ("min", "max")),
    "mean": ("mean", ("dim", "keepdim")),
    "view": ("reshape", ()), "reshape": ("reshape", ()), "flatten": ("reshape", ()),
    "squeeze": ("reshape", ()), "unsqueeze": ("reshape", ()),
    "contiguous": ("identity", ()), "clone": ("identity", ()), "detach": ("identity", ()),
    **torch_elementwise.FX_METHODS,
    **torch_graph_ops.FX_METHODS,
}

_FX_DEFAULTS = {"eps": 1e-5, "keepdim": False, "count_include_pad": True, "ceil_mode": False}


def _module_call(module: nn.Module, x: object) -> tuple[str, dict[str, object]] | None:
    """The canonical call a leaf module stands for, or None if mbgen has no equivalent."""
    train_error = None
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            return ("unsupported-padding-mode", {})
        return ("convolution", {"input": x, "weight": module.weight, "bias": module.bias,
                                "stride": module.stride, "padding": module.padding,
                                "dilation": module.dilation, "groups": module.groups})
    if isinstance(module, nn.BatchNorm2d):
        train_error = module.training or module.running_mean is None
        return ("batch_norm", {"input": x, "weight": module.weight, "bias": module.bias,
                               "running_mean": module.running_mean,
                               "running_var": module.running_var,
                               "training": train_error, "eps": module.eps})
    if isinstance(module, nn.ReLU):
        return ("relu", {"self": x})
    if isinstance(module, nn.Hardtanh):  # nn.ReLU6 is a Hardtanh(0, 6)
        return ("hardtanh", {"self": x, "min_val": module.min_val, "max_val": module.max_val})
    if isinstance(module, nn.Hardswish):
        return ("hardswish", {"self": x})
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return ("adaptive_avg_pool2d", {"self": x, "output_size": module.output_size})
    if isinstance(module, nn.AvgPool2d):
        return ("avg_pool2d", {"self": x, "kernel_size": module.kernel_size,
                               "stride": module.stride, "padding": module.padding,
                               "ceil_mode": module.ceil_mode,
                               "count_include_pad": module.count_include_pad,
                               "divisor_override": module.divisor_override})
    if isinstance(module, nn.Flatten):
        return ("reshape", {"self": x})
    if isinstance(module, nn.Linear):
        return ("linear", {"input": x, "weight": module.weight, "bias": module.bias})
    if isinstance(module, nn.ZeroPad2d):
        return ("zero_pad", {"self": x, "pad": module.padding})
    if isinstance(module, nn.Softmax):
        return ("softmax", {"self": x, "dim": module.dim})
    if isinstance(module, (nn.Dropout, nn.Identity)):
        return ("identity", {"self": x, "training": module.training
                             and isinstance(module, nn.Dropout) and module.p > 0})
    return (torch_elementwise.module_call(module, x)
            or torch_hard_activations.module_call(module, x)
            or torch_graph_ops.module_call(module, x))


def _type_label(cls_path: str) -> str:
    """'torch.nn.modules.activation.LeakyReLU' -> 'nn.LeakyReLU'; user classes stay qualified."""
    if cls_path.startswith("torch.nn.modules."):
        return "nn." + cls_path.rsplit(".", 1)[-1]
    return cls_path


def _innermost_module(node: torch.fx.Node) -> tuple[str, str]:
    """(module path, type label) of the innermost module that made ``node``, if recorded."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", ""
    path, cls = list(stack.values())[-1]
    cls_name = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
    return str(path), _type_label(cls_name)


def _fx_shape(node: torch.fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    if meta is not None and hasattr(meta, "shape"):
        return tuple(int(d) for d in meta.shape)
    return None


def _target_label(target: object) -> str:
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", repr(target))
    if module.startswith("torch.nn.functional"):
        return f"F.{name}"
    if module in ("_operator", "operator"):
        return f"operator.{name}"
    return f"{module}.{name}" if module else name


# ----------------------------------------------------------------------------- entry points


def _check_training_flags(call: Call) -> None:
    if call.op == "identity" and call.args.get("training"):
        raise UserError(f"layer {call.layer!r} ({call.kind}) is in training mode; call "
                        "model.eval() before converting")


def _finish(b: Builder, name: str, input_name: str, results: list[object],
            source: str) -> ir.Graph:
    outputs: list[str] = []
    for value in torch_hard_activations.materialize(b, list(results)):
        if not isinstance(value, Value) or value.name == input_name:
            raise UserError(f"{source}: every model output must be a tensor computed from the "
                            f"input, got {type(value).__name__}")
        if value.flat_from is not None:
            raise UserError(f"{source}: output {value.name!r} is a flattened {value.flat_from} "
                            "feature map; mbgen stores it in HWC order, which PyTorch does not")
        outputs.append(value.name)
    b.nodes = fold_zero_pads(b.nodes, b.tensors, outputs)
    graph = ir.Graph(name=name, tensors=b.tensors, nodes=b.nodes, inputs=[input_name],
                     outputs=outputs, metadata={"source": source})
    ir.verify(graph)
    return graph


def _flatten_outputs(value: object) -> list[object]:
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in _flatten_outputs(item)]
    return [value]


def from_module(module: nn.Module, example_input: torch.Tensor, name: str) -> ir.Graph:
    """Trace ``module`` with torch.fx and convert it to a float NHWC IR graph.

    ``example_input`` is an NCHW float tensor; its first image sets every shape (the graph is
    batch 1). The module should be in eval mode; BatchNorm or Dropout in training mode is a
    UserError, since their eval-mode meaning is what gets compiled.
    """
    if not isinstance(example_input, torch.Tensor) or example_input.dim() != 4:
        raise UserError("example input must be an NCHW torch.Tensor, e.g. torch.zeros(1, 3, H, W)")
    example = example_input[:1].to(torch.float32)
    try:
        traced = torch.fx.symbolic_trace(module)
    except Exception as exc:  # torch.fx raises many types; any of them means "not traceable"
        raise UserError(f"cannot trace model {name!r} with torch.fx ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}); export it with "
                        "torch.export.save and pass the .pt2 file instead") from None
    with torch.no_grad():
        try:
            ShapeProp(traced).propagate(example)
        except Exception as exc:
            raise UserError(f"model {name!r} fails on an input of shape "
                            f"{list(example.shape)}: {exc}") from None
    modules = dict(traced.named_modules())

    b = Builder()
    values: dict[str, object] = {}
    input_name = "input"
    results: list[object] = []
    for node in traced.graph.nodes:
        args = torch.fx.node.map_arg(node.args, lambda n: values[n.name])
        kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: values[n.name])
        if node.op == "placeholder":
            if input_name in b.tensors:
                raise UserError(f"model {name!r} takes several inputs; mbgen models take one "
                                "image")
            values[node.name] = b.add_input(input_name, tuple(example.shape))
            continue
        if node.op == "output":
            results = _flatten_outputs(args[0])
            continue
        if node.op == "get_attr":
            values[node.name] = _fetch_attr(traced, node.target)
            continue
        values[node.name] = _convert_fx_node(b, node, args, kwargs, modules)
        # fx does not thread in-place writes: later reads of the written tensor name the
        # original node, so point that node at the result (``x.mul_(s)``, ``F.relu(x, True)``).
        written = torch_elementwise.fx_written_input(node, modules)
        if written is not None and isinstance(values.get(written), Value):
            values[written] = values[node.name]
    return _finish(b, name, input_name, results, f"torch module {type(module).__name__}")


def _fetch_attr(root: nn.Module, target: str) -> object:
    value: object = root
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _convert_fx_node(b: Builder, node: torch.fx.Node, args: tuple, kwargs: dict,
                     modules: dict[str, nn.Module]) -> object:
    layer, module_type = _innermost_module(node)
    if not contains_activation((args, kwargs)):
        return _evaluate_constant(node, args, kwargs, modules)
    if node.op == "call_module":
        module = modules[node.target]
        kind = _type_label(f"{type(module).__module__}.{type(module).__qualname__}")
        canonical = _module_call(module, args[0] if args else None)
        call = Call(canonical[0] if canonical else "", canonical[1] if canonical else {},
                     node.target, kind, _fx_shape(node))
        if canonical is None:
            raise unsupported(call, "this layer type has no mbgen equivalent")
        if call.op == "unsupported-padding-mode":
            raise unsupported(call, f"padding_mode={module.padding_mode!r} (only 'zeros')")
        if len(args) != 1 or kwargs:
            raise unsupported(call, "called with more than one input")
        _check_training_flags(call)
        return _convert(b, call, node.target)
    if node.op == "call_method":
        if node.target == "size":
            shape = args[0].torch_shape
            return shape[args[1]] if len(args) > 1 else torch.Size(shape)
        spec = _FX_METHODS.get(node.target)
        kind = f"Tensor.{node.target}"
        positional = (args[0],) + tuple(args[1:])
        names = ("self",) + (spec[1] if spec else ())
    else:  # call_function
        if node.target is getattr and args[1] == "shape":
            return torch.Size(args[0].torch_shape)
        if node.target is operator.getitem and (isinstance(args[0], tuple)
                                                or not contains_activation(args[0])):
            return args[0][args[1]]
        spec = _FX_FUNCTIONS.get(node.target)
        kind = _target_label(node.target)
        positional = tuple(args)
        names = spec[1] if spec else ()
    bound = dict(_FX_DEFAULTS)
    bound.update(zip(names, positional))
    bound.update(kwargs)
    call = Call(spec[0] if spec else "", bound, layer or node.name, kind, _fx_shape(node))
    if spec is None:
        raise unsupported(call, "this operation has no mbgen equivalent")
    _check_training_flags(call)
    return _convert(b, call, _node_name(layer, module_type, node.name))


def _evaluate_constant(node: torch.fx.Node, args: tuple, kwargs: dict,
                       modules: dict[str, nn.Module]) -> object:
    """Run a node whose inputs are all constants (weight reshapes, size arithmetic, ...)."""
    with torch.no_grad():
        if node.op == "call_module":
            return modules[node.target](*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        return node.target(*args, **kwargs)


def load_pt2(path: str | Path) -> ir.Graph:
    """Load a ``torch.export.save`` file and convert its ATen graph to a float NHWC IR graph."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file {str(path)!r} does not exist")
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise UserError(f"{str(path)!r} is not a readable torch.export .pt2 file "
                        f"({type(exc).__name__})") from None
    return _from_exported(program, path.stem, f"torch.export file {path.name}")


def _from_exported(program: torch.export.ExportedProgram, name: str, source: str) -> ir.Graph:
    from torch.export.graph_signature import InputKind, OutputKind

    sig = program.graph_signature
    specs = {spec.arg.name: spec for spec in sig.input_specs if hasattr(spec.arg, "name")}
    b = Builder()
    values: dict[str, object] = {}
    input_name = "input"
    results: list[object] = []
    for node in program.graph.nodes:
        if node.op == "placeholder":
            values[node.name] = _exported_placeholder(b, program, node, specs.get(node.name),
                                                      input_name, InputKind, source)
            continue
        if node.op == "output":
            user = [i for i, spec in enumerate(sig.output_specs)
                    if spec.kind == OutputKind.USER_OUTPUT]
            outs = _flatten_outputs(node.args[0])
            results = [values[outs[i].name] for i in user]
            continue
        if node.op != "call_function":
            raise UserError(f"{source}: unexpected graph node {node.op} {node.target}")
        args = torch.fx.node.map_arg(node.args, lambda n: values[n.name])
        kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: values[n.name])
        values[node.name] = _convert_aten_node(b, node, args, kwargs)
    if input_name not in b.tensors:
        raise UserError(f"{source}: the exported program takes no input tensor")
    return _finish(b, name, input_name, results, source)


def _exported_placeholder(b: Builder, program: torch.export.ExportedProgram,
                          node: torch.fx.Node, spec: object, input_name: str,
                          input_kinds: type, source: str) -> object:
    kind = getattr(spec, "kind", None)
    if kind in (input_kinds.PARAMETER, input_kinds.BUFFER, input_kinds.CONSTANT_TENSOR):
        # Non-persistent buffers and lifted constants live in .constants, not .state_dict.
        if spec.target in program.state_dict:
            return program.state_dict[spec.target]
        return program.constants[spec.target]
    if kind != input_kinds.USER_INPUT:
        raise UserError(f"{source}: unsupported program input {node.name!r} ({kind})")
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        raise UserError(f"{source}: program input {node.name!r} is not a tensor")
    if input_name in b.tensors:
        raise UserError(f"{source}: the program takes several inputs; mbgen models take one "
                        "image")
    try:
        shape = tuple(int(d) for d in val.shape)
    except (TypeError, RuntimeError):
        raise UserError(f"{source}: input shape {list(val.shape)} is dynamic; export with "
                        "static shapes") from None
    if len(shape) != 4 or shape[0] != 1:
        raise UserError(f"{source}: input shape {list(shape)} is not a batch-1 NCHW image; "
                        "export with an example input like torch.zeros(1, 3, H, W)")
    return b.add_input(input_name, shape)


def _exported_shape(node: torch.fx.Node) -> tuple[int, ...] | None:
    val = node.meta.get("val")
    if isinstance(val, (tuple, list)):
        val = val[0] if val else None
    if isinstance(val, torch.Tensor):
        return tuple(int(d) for d in val.shape)
    return None


def _convert_aten_node(b: Builder, node: torch.fx.Node, args: tuple, kwargs: dict) -> object:
    target = node.target
    if target is operator.getitem:
        return args[0][args[1]]
    op_name = _aten_name(target)
    if op_name in _ATEN_CHECKS:
        return None
    if not contains_activation((args, kwargs)):
        with torch.no_grad():
            return target(*args, **kwargs)  # constant folding: weight transposes etc.
    layer, module_type = _innermost_module(node)
    canonical = _ATEN_OPS.get(op_name or "")
    bound = _bind_aten(target, args, kwargs) if canonical else {}
    kind = f"{module_type}, {target}" if module_type else str(target)
    call = Call(canonical or "", bound, layer or node.name, kind, _exported_shape(node))
    if canonical is None:
        raise unsupported(call, "this operation has no mbgen equivalent")
    _check_training_flags(call)
    result = _convert(b, call, _node_name(layer, module_type, canonical))
    if op_name in _TUPLE_RESULTS:
        return (result, None, None)
    return result
