"""The model zoo: names, architecture sizes against the papers, determinism, sane activations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mbgen import zoo
from mbgen.errors import UserError


def count_macs_and_params(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    """Multiply-adds of convolutions and linear layers (as the papers count them), and weights
    of all parameters (BatchNorm included, as torchvision reports MobileNetV2's 3.5 M)."""
    macs = 0

    def hook(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            macs += output.numel() * module.weight[0].numel()
        else:
            macs += module.weight.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(shape))
    for handle in handles:
        handle.remove()
    return macs, sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, macs_m, params_m", [
    ("mbv1_0.25_128", 14, 0.47),    # MobileNetV1 paper, Table 7
    ("mbv1_1.0_224", 569, 4.2),     # MobileNetV1 paper, Table 7
    ("mbv2_1.0_224", 300, 3.4),     # MobileNetV2 paper, Table 4 (3.47 M with torchvision's BN)
    ("mbv2_0.35_224", 59, 1.66),    # TF-Slim MobileNetV2 checkpoint table
])
def test_size_matches_published_numbers(name: str, macs_m: float, params_m: float) -> None:
    macs, params = count_macs_and_params(zoo.get(name), zoo.input_shape(name))
    assert macs / 1e6 == pytest.approx(macs_m, rel=0.04)
    assert params / 1e6 == pytest.approx(params_m, rel=0.04)


def test_names_cover_every_alpha_and_resolution() -> None:
    names = zoo.names()
    assert len(names) == len(set(names)) == 2 * 4 * 5 + 2 * 3 * 5 + 5 + 2 * 5
    assert "mbv1_0.25_128" in names and "mbv1_1.0_224" in names
    assert "mbv2_0.35_96" in names and "mbv2_0.75_160" in names
    assert "mbv3s_0.75_128" in names and "mbv3l_0.5_160" in names
    prefixes = {"mobilenet_v1": "mbv1", "mobilenet_v2": "mbv2", "mobilenet_v3_small": "mbv3s",
                "mobilenet_v3_large": "mbv3l", "squeezenet1_1": "squeezenet1_1",
                "shufflenet_v2": "shufflenetv2"}
    for name in names:
        info = zoo.describe(name)
        prefix = prefixes[info.family]
        assert name.startswith(prefix + "_")
        assert zoo.input_shape(name) == (1, 3, info.resolution, info.resolution)


def test_describe_parses_the_name() -> None:
    info = zoo.describe("mbv2_0.75_192")
    assert (info.family, info.alpha, info.resolution) == ("mobilenet_v2", 0.75, 192)


@pytest.mark.parametrize("bad, close", [("mbv1_0.25_12", "mbv1_0.25_128"),
                                        ("mbv2_0.35_69", "mbv2_0.35_96"),
                                        ("mbv1_1_224", "mbv1_1.0_224")])
def test_unknown_name_is_a_user_error_naming_close_matches(bad: str, close: str) -> None:
    assert close in zoo.suggest(bad)
    with pytest.raises(UserError, match=close.replace(".", r"\.")):
        zoo.get(bad)


def test_unknown_name_far_from_everything_still_explains() -> None:
    with pytest.raises(UserError, match="resnet50"):
        zoo.input_shape("resnet50")


def test_weights_are_deterministic_per_seed() -> None:
    a, b = zoo.get("mbv1_0.25_96"), zoo.get("mbv1_0.25_96")
    c = zoo.get("mbv1_0.25_96", seed=1)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    weight = "features.0.0.weight"
    assert not torch.equal(a.state_dict()[weight], c.state_dict()[weight])


def test_weights_do_not_depend_on_the_thread_count() -> None:
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        a = zoo.get("mbv1_0.25_96")
        torch.set_num_threads(1)
        b = zoo.get("mbv1_0.25_96")
    finally:
        torch.set_num_threads(threads)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


def test_global_rng_is_left_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    zoo.get("mbv2_0.35_96")
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("name", ["mbv1_0.25_128", "mbv2_0.35_96", "mbv3s_0.5_96"])
def test_eval_mode_with_real_batchnorm_statistics(name: str) -> None:
    model = zoo.get(name)
    assert not model.training
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns
    for bn in bns:
        assert not bn.training
        assert bn.running_mean.abs().max() > 1e-3          # not the reset value 0
        assert (bn.running_var - 1).abs().max() > 1e-3     # not the reset value 1
        assert bn.weight.std() > 0.05                      # gamma is not all ones


@pytest.mark.parametrize("name", ["mbv1_0.25_128", "mbv2_0.35_96", "mbv2_1.0_96", "mbv3s_0.75_96",
                                  "mbv3l_0.5_96"])
def test_activations_stay_well_scaled(name: str) -> None:
    model = zoo.get(name)
    stds: list[float] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: stds.append(float(out.std())))
             for m in model.modules() if isinstance(m, (nn.ReLU6, nn.BatchNorm2d))]
    images = torch.rand((2,) + zoo.input_shape(name)[1:],
                        generator=torch.Generator().manual_seed(7)) * 2 - 1
    with torch.no_grad():
        logits = model(images)
    for hook in hooks:
        hook.remove()
    assert 0.1 < min(stds) and max(stds) < 10.0
    assert 0.3 < float(logits.std()) < 3.0
    # The logits depend on the image, not only on the biases.
    assert float((logits[0] - logits[1]).abs().max()) > 0.1


def test_num_classes_sets_the_classifier() -> None:
    model = zoo.get("mbv2_0.35_96", num_classes=2)
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 96, 96)).shape == (1, 2)
    with pytest.raises(UserError):
        zoo.get("mbv2_0.35_96", num_classes=0)


def test_mobilenet_v2_channels_and_residuals() -> None:
    model = zoo.get("mbv2_0.35_96")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.out_channels % 8 == 0 for c in convs)
    assert convs[0].out_channels == 16                  # 32 * 0.35 rounded up to keep >= 90 %
    assert convs[-1].out_channels == 1280               # 1280 * max(1, alpha)
    blocks = [m for m in model.modules() if isinstance(m, zoo.InvertedResidual)]
    assert len(blocks) == 17
    assert sum(b.use_residual for b in blocks) == 10    # stride-1 repeats of the t/c/n/s table
    assert zoo.get("mbv2_1.0_96").classifier.in_features == 1280


def test_mobilenet_v1_layout() -> None:
    model = zoo.get("mbv1_0.5_96")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 27                              # stem + 13 x (dw, pw)
    depthwise = [c for c in convs if c.groups > 1]
    assert len(depthwise) == 13 and all(c.groups == c.in_channels for c in depthwise)
    assert [c.stride[0] for c in depthwise].count(2) == 4
    assert convs[0].out_channels == 16 and convs[-1].out_channels == 512
    assert sum(isinstance(m, nn.ReLU6) for m in model.modules()) == 27


@pytest.mark.parametrize("value, expected", [(32 * 0.35, 16), (1280, 1280), (24 * 0.5, 16),
                                             (96 * 0.75, 72), (160 * 0.35, 56), (3, 8)])
def test_make_divisible(value: float, expected: int) -> None:
    assert zoo.make_divisible(value) == expected
