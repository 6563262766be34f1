"""Static memory planner: hand-derived lifetimes, invariants on random buffers and graphs.

Expected offsets below are worked out by hand (the TFLM cases are the ones of TFLM's
greedy_memory_planner_test.cc, whose expected values come from TFLM, not from us). Random
cases are judged by independent checks: a replay of the lifetimes, and a byte-level
simulation of running the graph on the planned arena.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mbgen import ir
from mbgen.errors import UserError
from mbgen.planner import (
    Buffer, assert_valid_plan, free_bytes_beside, lower_bound, plan, plan_graph,
    tflm_greedy_arena,
    tflm_greedy_plan,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


# ----------------------------------------------------------------------------- helpers


def check_assignment(buffers: list[Buffer], offsets: dict[str, int], arena_size: int,
                     alignment: int) -> None:
    """Replay time: at every node, the live buffers must sit side by side inside the arena."""
    assert arena_size % alignment == 0
    horizon = max((b.last_use for b in buffers), default=-1)
    for t in range(horizon + 1):
        live = sorted((offsets[b.name], offsets[b.name] + b.size, b.name)
                      for b in buffers if b.first_use <= t <= b.last_use and b.size > 0)
        for (_, end, name), (start, _, other) in zip(live, live[1:]):
            assert end <= start, f"t={t}: {name} ends at {end}, {other} starts at {start}"
    for b in buffers:
        assert offsets[b.name] % alignment == 0, b
        assert 0 <= offsets[b.name] and offsets[b.name] + b.size <= arena_size, b


def buffers_from(triples: list[tuple[int, int, int]]) -> list[Buffer]:
    """TFLM-test style: buffer i is (size, first_used, last_used)."""
    return [Buffer(str(i), size, first, last) for i, (size, first, last) in enumerate(triples)]


class GraphBuilder:
    """Small float ir.Graph chains; shapes are real so byte sizes are, too."""

    def __init__(self) -> None:
        self.tensors: dict[str, ir.Tensor] = {}
        self.nodes: list[ir.Node] = []
        self.inputs: list[str] = []

    def _tensor(self, shape: tuple[int, ...], data: np.ndarray | None = None) -> str:
        name = f"t{len(self.tensors)}"
        self.tensors[name] = ir.Tensor(name, shape, "float32", data)
        return name

    def _node(self, op: ir.OpAttrs, inputs: list[str], out_shape: tuple[int, ...]) -> str:
        out = self._tensor(out_shape)
        self.nodes.append(ir.Node(f"n{len(self.nodes)}", op, inputs, [out]))
        return out

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name].shape

    def input(self, shape: tuple[int, ...]) -> str:
        name = self._tensor(shape)
        self.inputs.append(name)
        return name

    def conv(self, x: str, out_channels: int, stride: int = 1) -> str:
        _, h, w, c = self.shape(x)
        weight = self._tensor((out_channels, 1, 1, c),
                              np.zeros((out_channels, 1, 1, c), np.float32))
        out_shape = (1, -(-h // stride), -(-w // stride), out_channels)
        return self._node(ir.Conv2D(stride=(stride, stride)), [x, weight], out_shape)

    def add(self, a: str, b: str) -> str:
        return self._node(ir.Add(), [a, b], self.shape(a))

    def reshape(self, x: str, shape: tuple[int, ...]) -> str:
        return self._node(ir.Reshape(shape), [x], shape)

    def identity(self, x: str) -> str:
        return self._node(ir.Identity(), [x], self.shape(x))

    def fc(self, x: str, out_features: int) -> str:
        in_features = self.shape(x)[1]
        weight = self._tensor((out_features, in_features),
                              np.zeros((out_features, in_features), np.float32))
        return self._node(ir.FullyConnected(), [x, weight], (1, out_features))

    def build(self, output: str) -> ir.Graph:
        graph = ir.Graph("g", dict(self.tensors), list(self.nodes), list(self.inputs), [output])
        ir.verify(graph)
        return graph


def simulate(graph: ir.Graph, gplan, scratch: dict[str, int]) -> None:
    """Run the graph on bytes: every node stamps its output (and scratch) with its own id and
    checks that everything it reads still holds the stamp of whoever wrote it. Reshape /
    Identity write nothing unless the plan lists them as copies. The caller's input is
    read-only; the caller's output must end up holding what its producer wrote."""
    ids = {name: i for i, name in enumerate(graph.tensors)}
    scratch_id = {node.name: len(ids) + i for i, node in enumerate(graph.nodes)}
    arena = np.full(gplan.arena_size, -1, np.int64)
    caller = {"input": np.full(graph.tensors[graph.inputs[0]].nbytes, ids[graph.inputs[0]]),
              "output": np.full(graph.tensors[graph.outputs[0]].nbytes, -1, np.int64)}
    content = {graph.inputs[0]: ids[graph.inputs[0]]}  # tensor -> id of the bytes it holds

    def region(name: str) -> np.ndarray:
        size = graph.tensors[name].nbytes
        if name in gplan.external:
            where = caller[gplan.external[name]]
            assert size <= where.size, name
            return where[:size]
        offset = gplan.offsets[name]
        assert offset % gplan.alignment == 0 and offset + size <= gplan.arena_size, name
        return arena[offset:offset + size]

    def write(name: str, value: int) -> None:
        assert gplan.external.get(name) != "input", f"{name} written into the caller's input"
        region(name)[:] = value

    copies = set(gplan.copies)
    for i, node in enumerate(graph.nodes):
        reads = [x for x in node.inputs if not graph.tensors[x].is_const]
        for x in reads:
            assert np.all(region(x) == content[x]), f"{node.name}: input {x} was clobbered"
        out = node.outputs[0]
        is_view = isinstance(node.op, (ir.Reshape, ir.Identity)) and (reads[0], out) not in copies
        if is_view:
            content[out] = content[reads[0]]
        else:
            if scratch.get(node.name, 0) > 0:
                offset = gplan.scratch_offsets[node.name]
                assert offset % gplan.alignment == 0
                assert offset + scratch[node.name] <= gplan.arena_size
                arena[offset:offset + scratch[node.name]] = scratch_id[node.name]
            content[out] = content[reads[0]] if (reads[0], out) in copies else ids[out]
            write(out, content[out])
            if scratch.get(node.name, 0) > 0:
                offset = gplan.scratch_offsets[node.name]
                assert np.all(arena[offset:offset + scratch[node.name]]
                              == scratch_id[node.name]), f"{node.name}: scratch overlaps output"
        for x in reads + [out]:
            assert np.all(region(x) == content[x]), f"{node.name}: {x} overlaps another tensor"
    assert np.all(caller["output"] == content[graph.outputs[0]])


# ----------------------------------------------------------------------------- core: hand cases


def test_disjoint_lifetimes_share_offset_zero():
    # TFLM TestGreedyBasics: (10, 0-1) and (20, 2-3) never live together.
    buffers = buffers_from([(10, 0, 1), (20, 2, 3)])
    for result in (plan(buffers, alignment=1), tflm_greedy_plan(buffers, alignment=1)):
        assert result.offsets == {"0": 0, "1": 0}
        assert result.arena_size == 20


def test_tflm_medium_case_offsets_as_tflm_publishes_them():
    # TFLM TestGreedyMedium expects offsets 50, 70, 40, 0, 0 and a 90-byte arena.
    buffers = buffers_from([(10, 0, 1), (20, 1, 2), (30, 2, 3), (40, 3, 4), (50, 0, 1)])
    tflm = tflm_greedy_plan(buffers, alignment=1)
    assert tflm.offsets == {"0": 50, "1": 70, "2": 40, "3": 0, "4": 0}
    assert tflm.arena_size == 90


def test_medium_case_reaches_lower_bound_where_tflm_does_not():
    # At node 1 buffers 0, 1, 4 (10 + 20 + 50) are live: 80 bytes is a floor, and it is
    # reachable: 4@0, 0@50, 1@60, then 2@0 (clear of 1), 3@30 (clear of 2).
    buffers = buffers_from([(10, 0, 1), (20, 1, 2), (30, 2, 3), (40, 3, 4), (50, 0, 1)])
    assert lower_bound(buffers, alignment=1) == 80
    result = plan(buffers, alignment=1)
    assert result.arena_size == 80
    check_assignment(buffers, result.offsets, result.arena_size, alignment=1)


def test_tflm_overlap_case():
    # TFLM TestOverlapCase: 100 (0-1) and 20 (1-2) overlap; 50 (2-3) reuses offset 0.
    buffers = buffers_from([(100, 0, 1), (50, 2, 3), (20, 1, 2)])
    for result in (plan(buffers, alignment=1), tflm_greedy_plan(buffers, alignment=1)):
        assert result.offsets == {"0": 0, "1": 0, "2": 100}
        assert result.arena_size == 120


PERSON_DETECTION = [  # TFLM TestPersonDetectionModel: (size, first, last) per buffer
    (9216, 0, 29), (3, 28, 29), (256, 27, 28), (2304, 26, 27), (2304, 25, 26), (2304, 24, 25),
    (1152, 23, 24), (4608, 22, 23), (4608, 21, 22), (4608, 20, 21), (4608, 19, 20),
    (4608, 18, 19), (4608, 17, 18), (4608, 16, 17), (4608, 15, 16), (4608, 14, 15),
    (4608, 13, 14), (4608, 12, 13), (2304, 11, 12), (9216, 10, 11), (9216, 9, 10),
    (9216, 8, 9), (4608, 7, 8), (18432, 6, 7), (18432, 5, 6), (18432, 4, 5), (9216, 3, 4),
    (36864, 2, 3), (18432, 1, 2), (18432, 0, 1),
]


def test_person_detection_lifetimes_fit_in_the_peak():
    # TFLM only asserts < 241027 (the sum). At node 2 the input (9216), 18432 (1-2) and
    # 36864 (2-3) are live: 64512, and every size is a multiple of 16 there.
    buffers = buffers_from(PERSON_DETECTION)
    assert lower_bound(buffers) == 64512
    result = plan(buffers)
    assert result.arena_size == 64512 < 241027
    assert tflm_greedy_arena(buffers) == 64512
    check_assignment(buffers, result.offsets, result.arena_size, alignment=16)


def test_sizes_are_rounded_up_to_the_alignment():
    # 20 bytes take 32 at alignment 16, so the 10-byte buffer live alongside starts at 32.
    buffers = [Buffer("a", 10, 0, 1), Buffer("b", 20, 0, 1)]
    result = plan(buffers, alignment=16)
    assert result.offsets == {"b": 0, "a": 32}
    assert result.arena_size == 48
    assert lower_bound(buffers, alignment=16) == 48
    assert lower_bound(buffers, alignment=1) == 30


def test_equal_sizes_placed_in_order_of_first_use():
    buffers = [Buffer("late", 64, 2, 3), Buffer("early", 64, 0, 2)]
    assert plan(buffers).offsets == {"early": 0, "late": 64}


def test_empty_plan():
    assert plan([]).arena_size == 0
    assert lower_bound([]) == 0
    assert tflm_greedy_arena([]) == 0


@pytest.mark.parametrize("buffers, message", [
    ([Buffer("a", 4, 0, 1), Buffer("a", 4, 2, 3)], "duplicate"),
    ([Buffer("a", -1, 0, 1)], "negative"),
    ([Buffer("a", 4, 3, 1)], "before it is first used"),
])
def test_rejects_malformed_buffers(buffers, message):
    with pytest.raises(ValueError, match=message):
        plan(buffers)


def test_assert_valid_plan_catches_overlap():
    buffers = [Buffer("a", 16, 0, 1), Buffer("b", 16, 1, 2)]
    from mbgen.planner import ArenaPlan
    with pytest.raises(AssertionError, match="share bytes"):
        assert_valid_plan(buffers, ArenaPlan({"a": 0, "b": 0}, 16, "bad"))


# ----------------------------------------------------------------------------- core: properties


lifetimes = st.lists(
    st.tuples(st.integers(0, 5000), st.integers(0, 30), st.integers(0, 8)),
    max_size=30,
).map(lambda triples: [Buffer(f"b{i}", size, first, first + length)
                       for i, (size, first, length) in enumerate(triples)])

chains = st.lists(st.integers(1, 5000), min_size=1, max_size=30).map(
    # Node i reads buffer i and writes buffer i+1: each lives from its producer to its reader.
    lambda sizes: [Buffer(f"c{i}", size, i, i + 1) for i, size in enumerate(sizes)])


@settings(max_examples=150, deadline=None)
@given(buffers=st.one_of(lifetimes, chains), alignment=st.sampled_from([1, 4, 16]))
def test_random_lifetimes_never_overlap_and_never_lose_to_tflm(buffers, alignment):
    result = plan(buffers, alignment)
    check_assignment(buffers, result.offsets, result.arena_size, alignment)
    assert set(result.offsets) == {b.name for b in buffers}
    assert lower_bound(buffers, alignment) <= result.arena_size
    assert result.arena_size <= tflm_greedy_arena(buffers, alignment)
    tflm = tflm_greedy_plan(buffers, alignment)
    check_assignment(buffers, tflm.offsets, tflm.arena_size, alignment)


@settings(max_examples=60, deadline=None)
@given(buffers=lifetimes)
def test_plan_is_deterministic_and_pure(buffers):
    snapshot = list(buffers)
    assert plan(buffers) == plan(buffers)
    assert buffers == snapshot


# ----------------------------------------------------------------------------- graph layer


def test_chain_with_reshape_aliases_and_external_ends():
    b = GraphBuilder()
    x = b.input((1, 8, 8, 3))
    c1 = b.conv(x, 8)                        # n0
    c2 = b.conv(c1, 16, stride=2)            # n1
    flat = b.reshape(c2, (1, 4 * 4 * 16))    # n2: view of c2
    logits = b.fc(flat, 10)                  # n3
    graph = b.build(logits)
    gplan = plan_graph(graph)
    assert gplan.external == {x: "input", logits: "output"}
    assert set(gplan.offsets) == {c1, c2, flat}
    assert gplan.offsets[flat] == gplan.offsets[c2]
    # The view set {c2, flat} is one buffer live from c2's producer to flat's reader.
    assert Buffer(c2, 1024, 1, 3) in gplan.buffers
    # c1 (8*8*8*4 = 2048 B) is read by n1 which writes c2 (1024 B): both live at n1.
    assert gplan.peak_live_bytes == 2048 + 1024
    assert gplan.arena_size == 3072
    assert gplan.lifetimes[c2] == (1, 2, 1024, gplan.offsets[c2])
    assert gplan.lifetimes[flat] == (2, 3, 1024, gplan.offsets[c2])
    assert gplan.lifetimes[logits].offset is None
    assert gplan.copies == []
    simulate(graph, gplan, {})


def test_output_view_makes_its_producer_write_to_the_caller():
    b = GraphBuilder()
    x = b.input((1, 4, 4, 3))
    c1 = b.conv(x, 4)
    c2 = b.conv(c1, 2)
    out = b.reshape(c2, (1, 32))
    graph = b.build(out)
    gplan = plan_graph(graph)
    assert gplan.external == {x: "input", c2: "output", out: "output"}
    assert set(gplan.offsets) == {c1}
    simulate(graph, gplan, {})


def test_input_view_is_read_from_the_caller():
    b = GraphBuilder()
    x = b.input((1, 48))
    view = b.reshape(x, (1, 4, 4, 3))
    ident = b.identity(view)
    out = b.conv(ident, 2)
    graph = b.build(out)
    gplan = plan_graph(graph)
    assert gplan.external == {x: "input", view: "input", ident: "input", out: "output"}
    assert gplan.offsets == {} and gplan.arena_size == 0
    simulate(graph, gplan, {})


def test_input_reshaped_straight_to_output_needs_a_copy():
    b = GraphBuilder()
    x = b.input((1, 2, 2, 3))
    mid = b.identity(x)
    out = b.reshape(mid, (1, 12))
    graph = b.build(out)
    gplan = plan_graph(graph)
    assert gplan.external == {x: "input", mid: "input", out: "output"}
    assert gplan.copies == [(mid, out)]
    simulate(graph, gplan, {})


def test_residual_keeps_the_skip_tensor_alive_until_the_add():
    b = GraphBuilder()
    x = b.input((1, 4, 4, 8))
    skip = b.conv(x, 8)          # n0, 512 B, read by n1 and n3
    h1 = b.conv(skip, 8)         # n1
    h2 = b.conv(h1, 8)           # n2
    summed = b.add(skip, h2)     # n3
    out = b.conv(summed, 2)      # n4
    graph = b.build(out)
    gplan = plan_graph(graph)
    assert gplan.lifetimes[skip][:2] == (0, 3)
    # At n2 skip, h1 and h2 are live; at n3 skip, h2 and summed: 3 x 512 bytes.
    assert gplan.peak_live_bytes == 1536 == gplan.arena_size
    assert len({gplan.offsets[t] for t in (skip, h1, h2)}) == 3
    assert len({gplan.offsets[t] for t in (skip, h2, summed)}) == 3
    simulate(graph, gplan, {})


def test_scratch_lives_only_during_its_node():
    b = GraphBuilder()
    x = b.input((1, 4, 4, 4))
    c1 = b.conv(x, 4)     # n0, 256 B
    c2 = b.conv(c1, 4)    # n1
    c3 = b.conv(c2, 4)    # n2
    out = b.conv(c3, 4)   # n3
    graph = b.build(out)
    scratch = {"n1": 100, "n2": 100, "n0": 0}
    gplan = plan_graph(graph, scratch)
    assert set(gplan.scratch_offsets) == {"n1", "n2"}
    # n1 needs c1 + c2 + scratch live together: 256 + 256 + 112 (aligned).
    assert gplan.arena_size == gplan.peak_live_bytes == 624
    simulate(graph, gplan, scratch)


def test_free_bytes_beside_a_node_is_its_gap_under_the_arena():
    """The residual graph above: at n2 (skip, h1, h2 live) the arena is full; at n4 only
    summed and the 2-channel output are live, so the rest of the 1,536 bytes is free; a
    node's own scratch counts as free."""
    b = GraphBuilder()
    x = b.input((1, 4, 4, 8))
    skip = b.conv(x, 8)
    h2 = b.conv(b.conv(skip, 8), 8)
    out = b.conv(b.add(skip, h2), 2)
    graph = b.build(out)
    gplan = plan_graph(graph, {"n2": 64})
    free = free_bytes_beside(gplan, graph)
    assert gplan.arena_size == 1536 + 64
    assert free["n2"] == 64          # its own scratch: the only room beside skip, h1, h2
    # n4: summed (512 B) and the output (32 B) leave 1,056 bytes in at most three gaps
    assert 1056 // 3 <= free["n4"] <= gplan.arena_size - 512 - 32
    simulate(graph, gplan, {"n2": 64})


def test_constants_take_no_arena():
    b = GraphBuilder()
    x = b.input((1, 2, 2, 2))
    out = b.conv(b.conv(x, 2), 2)
    graph = b.build(out)
    gplan = plan_graph(graph)
    consts = {n for n, t in graph.tensors.items() if t.is_const}
    assert consts and not consts & (set(gplan.offsets) | set(gplan.external)
                                    | set(gplan.lifetimes))


def test_plan_graph_does_not_touch_the_graph():
    b = GraphBuilder()
    x = b.input((1, 4, 4, 3))
    out = b.fc(b.reshape(b.conv(x, 4), (1, 64)), 5)
    graph = b.build(out)
    before = copy.deepcopy(graph)
    plan_graph(graph, {"n0": 40})
    assert [(n.name, n.op, n.inputs, n.outputs) for n in graph.nodes] == \
        [(n.name, n.op, n.inputs, n.outputs) for n in before.nodes]
    assert graph.tensors.keys() == before.tensors.keys()
    assert (graph.inputs, graph.outputs) == (before.inputs, before.outputs)


def test_two_outputs_are_a_user_error():
    b = GraphBuilder()
    x = b.input((1, 2, 2, 2))
    a = b.conv(x, 2)
    c = b.conv(x, 2)
    graph = ir.Graph("two", b.tensors, b.nodes, [x], [a, c])
    with pytest.raises(UserError, match="exactly one"):
        plan_graph(graph)


def test_scratch_for_unknown_node_is_rejected():
    b = GraphBuilder()
    out = b.conv(b.input((1, 2, 2, 2)), 2)
    with pytest.raises(ValueError, match="unknown node"):
        plan_graph(b.build(out), {"nope": 16})


@st.composite
def random_graphs(draw, with_residuals: bool):
    """Random chains of 1x1 convs (some strided), views and dead branches; with residuals,
    adds that reach back to any earlier tensor of the same shape. Random scratch per node."""
    b = GraphBuilder()
    cur = b.input((1, draw(st.integers(1, 6)), draw(st.integers(1, 6)),
                   draw(st.integers(1, 6))))
    history = [cur]
    kinds = ["conv", "conv", "reshape", "identity", "dead"] + (["add"] * 3 if with_residuals
                                                                else [])
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(kinds))
        if kind == "conv":
            cur = b.conv(cur, draw(st.integers(1, 8)), draw(st.sampled_from([1, 2])))
        elif kind == "reshape":
            _, h, w, c = b.shape(cur)
            cur = b.reshape(cur, (1, 1, h * w, c))
        elif kind == "identity":
            cur = b.identity(cur)
        elif kind == "dead":
            b.conv(cur, draw(st.integers(1, 4)))   # written, never read
        else:
            same = [t for t in history if b.shape(t) == b.shape(cur)]
            cur = b.add(draw(st.sampled_from(same)), cur)
        history.append(cur)
    if cur == history[0]:
        cur = b.conv(cur, 2)  # only dead branches were drawn: give the graph an output
    if draw(st.booleans()):
        cur = b.reshape(cur, (1, int(np.prod(b.shape(cur)))))
    graph = b.build(cur)
    scratch = {node.name: draw(st.integers(0, 300)) for node in graph.nodes
               if draw(st.booleans())}
    return graph, scratch


@settings(max_examples=80, deadline=None)
@given(case=st.one_of(random_graphs(with_residuals=False), random_graphs(with_residuals=True)),
       alignment=st.sampled_from([1, 16]))
def test_random_graphs_run_correctly_on_the_planned_arena(case, alignment):
    graph, scratch = case
    gplan = plan_graph(graph, scratch, alignment)
    simulate(graph, gplan, scratch)
    activations = {n for n, t in graph.tensors.items() if not t.is_const}
    assert set(gplan.offsets) | set(gplan.external) == activations
    assert not set(gplan.offsets) & set(gplan.external)
    assert gplan.peak_live_bytes <= gplan.arena_size
    assert gplan.arena_size <= tflm_greedy_arena(gplan.buffers, alignment)


# ----------------------------------------------------------------------------- real models


@pytest.mark.parametrize("model", ["mbv1_0.25_128", "mbv2_0.35_96"])
def test_zoo_arena_against_tflm_and_lower_bound(model):
    zoo = pytest.importorskip("mbgen.zoo")
    torch_frontend = pytest.importorskip("mbgen.frontends.torch_frontend")
    torch = pytest.importorskip("torch")
    if model not in zoo.names():
        pytest.skip(f"{model} not in the zoo yet")
    graph = torch_frontend.from_module(zoo.get(model), torch.zeros(zoo.input_shape(model)),
                                       model)
    gplan = plan_graph(graph)
    tflm = tflm_greedy_arena(gplan.buffers)
    print(f"{model}: ours {gplan.arena_size} B ({gplan.strategy}), TFLM greedy {tflm} B, "
          f"lower bound {gplan.peak_live_bytes} B")
    assert gplan.peak_live_bytes <= gplan.arena_size <= tflm


# Non-persistent ("head") arena that real TFLM needed, from ../shared/models/MODELS.md. TFLM
# keeps the graph input and output in that arena too, so ours must never be larger.
TFLM_HEAD_BYTES = {"person_detect.tflite": 55_296, "mobilenet_v1_0.25_128.tflite": 524_288}


@pytest.mark.parametrize("model_file", sorted(TFLM_HEAD_BYTES))
def test_tflite_models_need_no_more_arena_than_real_tflm(model_file):
    path = SHARED / "models" / model_file
    if not path.exists():
        pytest.skip(f"{path} not found")
    tflite_frontend = pytest.importorskip("mbgen.frontends.tflite_frontend")
    graph = tflite_frontend.load_tflite(path)
    gplan = plan_graph(graph)
    print(f"{model_file}: ours {gplan.arena_size} B, TFLM greedy on our lifetimes "
          f"{tflm_greedy_arena(gplan.buffers)} B, real TFLM head {TFLM_HEAD_BYTES[model_file]} B, "
          f"lower bound {gplan.peak_live_bytes} B")
    assert gplan.peak_live_bytes <= gplan.arena_size <= TFLM_HEAD_BYTES[model_file]
