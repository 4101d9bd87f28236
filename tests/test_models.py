"""realfake.models: architectures, report parameter counts, weight loading, freezing, export."""
from __future__ import annotations

import logging

import pytest
import torch
import torchvision
from realfake.models import (
    MODEL_NAMES,
    build_model,
    default_image_size,
    input_shape,
    min_image_size,
    model_input,
)
from realfake.models.torchvision_nets import DropoutLinear
from torch.export import Dim, export

REPORT_CNNS = ("simple_cnn", "deep_cnn")
TORCHVISION_NETS = ("resnet18", "efficientnet_b0", "mobilenet_v3_small")
GHOST_NETS = ("ghost_cnn",)
HEADS = {
    "ghost_cnn": "fc",
    "simple_cnn": "fc2",
    "deep_cnn": "fc2",
    "resnet18": "fc",
    "efficientnet_b0": "classifier.1",
    "mobilenet_v3_small": "classifier.3",
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_eval(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def test_model_names_cover_the_zoo():
    assert set(MODEL_NAMES) == set(REPORT_CNNS) | set(TORCHVISION_NETS) | set(GHOST_NETS)
    assert isinstance(MODEL_NAMES, tuple)


@pytest.mark.parametrize(
    "name,size",
    [(n, s) for n in REPORT_CNNS for s in (64, 96)] + [(n, s) for n in TORCHVISION_NETS for s in (64, 128)],
)
def test_forward_shape_finite_and_channels_last(name, size):
    torch.manual_seed(0)
    model = build_model(name, image_size=size)
    x = torch.randn(3, 3, size, size)
    logits = forward_eval(model, x)
    assert logits.shape == (3, 2)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    # channels_last model + input gives the same logits (flatten must keep logical NCHW order).
    model = model.to(memory_format=torch.channels_last)
    logits_cl = forward_eval(model, x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(logits_cl, logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_min_image_size_works(name):
    size = min_image_size(name)
    assert size == (16 if name in REPORT_CNNS else 64 if name in GHOST_NETS else 32)
    logits = forward_eval(build_model(name, image_size=size), torch.randn(2, *input_shape(name, size)))
    assert logits.shape == (2, 2)


def test_ghost_cnn_reads_ghost_maps_of_any_size():
    assert model_input("ghost_cnn") == "ghosts" and model_input("resnet18") == "pixels"
    assert default_image_size("ghost_cnn") == 600 and default_image_size("simple_cnn") == 128
    assert input_shape("ghost_cnn", 600) == (33, 75, 75) and input_shape("resnet18", 224) == (3, 224, 224)
    model = build_model("ghost_cnn", image_size=600)
    assert forward_eval(model, torch.randn(2, 33, 75, 75)).shape == (2, 2)
    assert forward_eval(model, torch.randn(1, 33, 40, 52)).shape == (1, 2)  # global max-pool: any map size


@pytest.mark.parametrize("size", [17, 98, 130])
def test_report_cnns_take_sizes_not_divisible_by_4(size):
    # Two floor-mode poolings: the flatten size is 64 * (size // 4)^2.
    model = build_model("simple_cnn", image_size=size)
    assert model.fc1.in_features == 64 * (size // 4) ** 2
    assert forward_eval(model, torch.randn(2, 3, size, size)).shape == (2, 2)


def test_report_cnn_rejects_other_input_size():
    model = build_model("simple_cnn", image_size=64).eval()
    with pytest.raises(ValueError, match="built for 64x64 images"):
        model(torch.randn(1, 3, 96, 96))


def test_simple_cnn_matches_report_summary_at_128():
    model = build_model("simple_cnn", image_size=128)
    counts = {name: p.numel() for name, p in model.named_parameters()}
    per_layer = {layer: counts[f"{layer}.weight"] + counts[f"{layer}.bias"] for layer in ("conv1", "conv2", "fc1", "fc2")}
    # The report's torchsummary table: Conv2d-1, Conv2d-3, Linear-5, Linear-7.
    assert per_layer == {"conv1": 896, "conv2": 18_496, "fc1": 8_388_736, "fc2": 258}
    assert sum(per_layer.values()) == 8_408_386
    # BatchNorm after conv2 (in the report's layer list, missing from its summary) adds 2 * 64.
    assert n_params(model) == 8_408_386 + 128
    assert model.dropout.p == 0.5


def test_deep_cnn_matches_report_summary_at_128():
    # 134M parameters: build on the meta device to count them without allocating 540 MB.
    with torch.device("meta"):
        model = build_model("deep_cnn", image_size=128)
    counts = {name: p.numel() for name, p in model.named_parameters()}
    assert counts["fc1.weight"] + counts["fc1.bias"] == 134_218_240  # Linear-10
    assert counts["conv4.weight"] + counts["conv4.bias"] == 295_168  # Conv2d-7
    assert n_params(model) == 134_608_002
    assert model.dropout_features.p == model.dropout_fc.p == 0.5


def test_resnet18_head_replaced():
    model = build_model("resnet18")
    # torchvision's 11,689,512 with the 1000-class fc (513,000) swapped for a 2-class one (1,026).
    assert n_params(model) == 11_177_538
    assert model.fc.out_features == 2


def test_dropout_option_sets_the_head_dropout():
    assert build_model("simple_cnn", image_size=32, dropout=0.3).dropout.p == 0.3
    resnet = build_model("resnet18", dropout=0.3)
    assert isinstance(resnet.fc, DropoutLinear) and resnet.fc.p == 0.3
    assert not isinstance(build_model("resnet18").fc, DropoutLinear)
    assert build_model("efficientnet_b0", image_size=32, dropout=0.3).classifier[0].p == 0.3
    assert build_model("mobilenet_v3_small", image_size=32, dropout=0.3).classifier[2].p == 0.3


def test_num_classes():
    assert forward_eval(build_model("resnet18", num_classes=5), torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert forward_eval(build_model("simple_cnn", num_classes=3, image_size=32), torch.randn(2, 3, 32, 32)).shape == (2, 3)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_freeze_backbone_trains_only_the_head(name, caplog):
    size = min_image_size(name)
    with caplog.at_level(logging.WARNING, logger="realfake.models"):
        model = build_model(name, image_size=size, freeze_backbone=True)
    assert "randomly initialized backbone" in caplog.text  # freezing without weights= is likely a mistake
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{HEADS[name]}.weight", f"{HEADS[name]}.bias"}
    # A training step reaches the head only.
    model.train()
    model(torch.randn(2, *input_shape(name, size))).sum().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == trainable


def test_weights_round_trip_checkpoint_dict(tmp_path):
    source = build_model("simple_cnn", image_size=32)
    with torch.no_grad():
        for p in source.parameters():
            p.uniform_(-1, 1)
    # The trainer's checkpoint layout: a dict with the state dict under "model".
    torch.save({"model": source.state_dict(), "epoch": 3}, tmp_path / "best.pt")
    loaded = build_model("simple_cnn", image_size=32, weights=tmp_path / "best.pt")
    for (key, a), b in zip(source.state_dict().items(), loaded.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, msg=key)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(forward_eval(loaded, x), forward_eval(source, x))


def test_weights_load_across_dropout_and_compile_prefix(tmp_path):
    # Saved from a model with a dropout head and wrapped by torch.compile ("_orig_mod." keys),
    # under "state_dict"; loaded into a plain resnet18.
    source = build_model("resnet18", dropout=0.2)
    state = {f"_orig_mod.{k}": v for k, v in source.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "w.pt")
    loaded = build_model("resnet18", weights=tmp_path / "w.pt")
    torch.testing.assert_close(loaded.fc.weight, source.fc.weight)
    torch.testing.assert_close(loaded.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)


@pytest.mark.parametrize(
    "name,factory",
    [
        ("resnet18", torchvision.models.resnet18),
        ("mobilenet_v3_small", torchvision.models.mobilenet_v3_small),  # head inside a Sequential
    ],
)
def test_weights_from_imagenet_file_keep_new_head(name, factory, tmp_path, caplog):
    imagenet = factory(weights=None)  # same layout as torchvision's downloadable 1000-class files
    state = imagenet.state_dict()
    if name == "resnet18":
        # torchvision's resnet18-f37072fd.pth predates BatchNorm's num_batches_tracked buffer.
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "imagenet.pth")
    with caplog.at_level(logging.INFO, logger="realfake.models"):
        model = build_model(name, weights=tmp_path / "imagenet.pth")
    head = HEADS[name]
    for key, value in model.state_dict().items():
        if key.startswith(head + "."):
            assert value.shape[0] == 2
        elif key in state:
            torch.testing.assert_close(value, state[key], msg=key)
    assert f"{head}.weight" in caplog.text and f"{head}.bias" in caplog.text
    assert forward_eval(model, torch.randn(2, 3, 64, 64)).shape == (2, 2)


def test_error_unknown_model():
    with pytest.raises(ValueError, match=r"unknown model 'resnet19': choose one of simple_cnn, deep_cnn, resnet18"):
        build_model("resnet19")
    with pytest.raises(ValueError, match="unknown model"):
        min_image_size("vgg16")


@pytest.mark.parametrize("name,size,minimum", [("deep_cnn", 8, 16), ("simple_cnn", 0, 16), ("resnet18", 16, 32)])
def test_error_image_size_too_small(name, size, minimum):
    with pytest.raises(ValueError, match=f"image size {size} is too small for {name}: use at least {minimum}"):
        build_model(name, image_size=size)


@pytest.mark.parametrize("kwargs,match", [
    ({"image_size": 64.0}, "image size must be an integer"),
    ({"dropout": 1.0}, "dropout 1.0 is out of range"),
    ({"num_classes": 0}, "num_classes must be a positive integer"),
])
def test_error_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model("simple_cnn", **kwargs)


def test_error_missing_weights_file(tmp_path):
    with pytest.raises(ValueError, match=r"weights file .*nope\.pt does not exist"):
        build_model("resnet18", weights=tmp_path / "nope.pt")


def test_error_garbage_weights_file(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"this is not a torch file\n" * 20)
    with pytest.raises(ValueError, match=r"cannot read weights file .*garbage\.pt") as info:
        build_model("resnet18", weights=path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("content", [[1, 2, 3], {"epoch": 3, "lr": 0.1}, {}])
def test_error_weights_file_without_state_dict(tmp_path, content):
    torch.save(content, tmp_path / "w.pt")
    with pytest.raises(ValueError, match="holds no state dict"):
        build_model("simple_cnn", image_size=32, weights=tmp_path / "w.pt")


def test_error_weights_of_other_image_size(tmp_path):
    torch.save(build_model("simple_cnn", image_size=32).state_dict(), tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"does not fit simple_cnn: fc1\.weight is \(128, 4096\) in the file"):
        build_model("simple_cnn", image_size=64, weights=tmp_path / "w.pt")


def test_error_weights_of_other_architecture(tmp_path):
    torch.save(build_model("resnet18").state_dict(), tmp_path / "resnet.pt")
    with pytest.raises(ValueError, match="no tensor in weights file .* fits mobilenet_v3_small"):
        build_model("mobilenet_v3_small", weights=tmp_path / "resnet.pt")
    # A deeper ResNet shares every resnet18 key but has extra blocks: not silently truncated.
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "resnet34.pt")
    with pytest.raises(ValueError, match="file tensors not in the model"):
        build_model("resnet18", weights=tmp_path / "resnet34.pt")


@pytest.mark.parametrize("name", ["simple_cnn", "resnet18"])
def test_export_with_dynamic_batch(name):
    # engines/ builds AOTInductor packages from this graph: one export must serve any batch size.
    model = build_model(name, image_size=64).eval()
    exported = export(model, (torch.randn(2, 3, 64, 64),), dynamic_shapes=({0: Dim("batch", min=1, max=1024)},))
    for batch in (1, 5):
        x = torch.randn(batch, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(exported.module()(x), model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name,dropout", [("simple_cnn", None), ("deep_cnn", None), ("resnet18", 0.2)])
def test_compile_full_graph(name, dropout):
    # fullgraph=True fails on any graph break (e.g. data-dependent control flow); the "eager"
    # backend checks tracing without paying for code generation.
    torch._dynamo.reset()
    model = build_model(name, image_size=32, dropout=dropout).eval()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
