"""Architecture IR: validation messages, shape/param/MAC inference, build, seam, hash, distance, schema."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch
from hypothesis import given, settings
from torch.utils.flop_counter import FlopCounterMode

from strategies import architectures
from uhnas.arch import (
    ArchitectureError,
    analyze,
    arch_hash,
    architecture_schema,
    load_architecture,
    parse_architecture,
    parse_architecture_json,
    structural_distance,
    to_json,
)
from uhnas.arch.build import Network, build, forward_draws

DIGITS = ((1, 8, 8), 10)
MNIST = ((1, 28, 28), 10)
MLP = {
    "layers": [
        {"type": "flatten"},
        {"type": "linear", "out_features": 32},
        {"type": "activation", "function": "relu"},
        {"type": "linear", "out_features": 10},
    ]
}


def _error(data: dict, shape=DIGITS) -> str:
    with pytest.raises(ArchitectureError) as info:
        analyze(parse_architecture(data), *shape)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_mlp_counts_by_hand():
    summary = analyze(parse_architecture(MLP), *DIGITS)
    assert [i.out_shape for i in summary.layers] == [(64,), (32,), (32,), (10,)]
    assert summary.params == 64 * 32 + 32 + 32 * 10 + 10
    assert summary.macs == 64 * 32 + 32 * 10
    assert [m.matrix for m in summary.matmuls] == [(32, 64), (10, 32)]


def test_cnn_counts_by_hand():
    data = json.loads(open("examples/cnn_digits.json").read())
    summary = analyze(parse_architecture(data), *DIGITS)
    conv1, conv2 = summary.matmuls[0], summary.matmuls[1]
    assert conv1.out_shape == (8, 8, 8) and conv1.matrix == (8, 9) and conv1.reuse == 64
    assert conv1.macs == 8 * 9 * 64 and conv1.params == 8 * 9 + 8
    assert conv2.out_shape == (16, 4, 4) and conv2.matrix == (16, 72) and conv2.reuse == 16
    assert summary.layers[-1].out_shape == (10,)
    assert summary.matmuls[-1].matrix == (10, 64)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"layers": [{"type": "linear", "out_features": 10}]}, "layer 0 (linear): input is 1x8x8 (not flat)"),
        (
            {
                "layers": [
                    {"type": "flatten"},
                    {"type": "conv2d", "out_channels": 4, "kernel": 3},
                    {"type": "flatten"},
                    {"type": "linear", "out_features": 10},
                ]
            },
            "layer 1 (conv2d): input is flat",
        ),
        (
            {"layers": [{"type": "flatten"}, {"type": "linear", "out_features": 12}]},
            "output shape is 12 but the dataset has 10 classes",
        ),
        (
            {
                "layers": [
                    {"type": "conv2d", "out_channels": 4, "kernel": 7, "stride": 3},
                    {"type": "maxpool", "kernel": 4},
                    {"type": "flatten"},
                    {"type": "linear", "out_features": 10},
                ]
            },
            "layer 1 (maxpool): kernel 4 is larger than the input 1x1",
        ),
        (
            {"layers": [{"type": "flatten"}, {"type": "flatten"}, {"type": "linear", "out_features": 10}]},
            "layer 1 (flatten): input is already flat",
        ),
        (
            {
                "layers": [{"type": "flatten"}]
                + [{"type": "linear", "out_features": 2048}] * 3
                + [{"type": "linear", "out_features": 10}]
            },
            "parameters exceed the limit",
        ),
    ],
)
def test_impossible_architectures_are_named(data, fragment):
    assert fragment in _error(data)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (
            {"layers": [{"type": "flatten"}, {"type": "linear", "out_features": 0}]},
            "layer 1 (linear): out_features: Input should be greater than or equal to 1",
        ),
        ({"layers": [{"type": "flatten"}, {"type": "dense", "units": 3}]}, "layer 1 (dense): unknown layer type"),
        ({"layers": [{"type": "flatten", "size": 3}]}, "layer 0 (flatten): size: unknown field"),
        ({"layers": [{"type": "activation", "function": "swish"}]}, "layer 0 (activation): function"),
        ({"layers": [{"out_features": 3}]}, "layer 0 (missing type): missing 'type'"),
        ({"layers": []}, "layers: List should have at least 1 item"),
        ({"layers": [{"type": "flatten"}], "author": "x"}, "author: unknown field"),
        (
            {"layers": [{"type": "conv2d", "out_channels": 4, "kernel": 9}]},
            "layer 0 (conv2d): kernel: Input should be less than or equal to 7",
        ),
    ],
)
def test_malformed_fields_are_named(data, fragment):
    with pytest.raises(ArchitectureError) as info:
        parse_architecture(data)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_json_errors_name_the_source_and_position(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"layers": [\n  {"type": "flatten",}\n]}')
    with pytest.raises(ArchitectureError, match=r"bad.json: invalid JSON at line 2"):
        load_architecture(path)
    with pytest.raises(ArchitectureError, match="no such file"):
        load_architecture(tmp_path / "missing.json")
    with pytest.raises(ArchitectureError, match="must be a JSON object"):
        parse_architecture_json("[1, 2]")


@settings(max_examples=60, deadline=None)
@given(architectures())
def test_random_architectures_roundtrip_build_and_match_predictions(data):
    arch = parse_architecture(data)
    again = parse_architecture_json(to_json(arch))
    assert again == arch and arch_hash(again) == arch_hash(arch)
    summary = analyze(arch, *DIGITS)
    model = build(arch, *DIGITS, seed=0).eval()
    assert sum(p.numel() for p in model.parameters()) == summary.params
    x = torch.randn(3, *DIGITS[0])
    with FlopCounterMode(display=False) as counter:
        out = model(x)
    assert out.shape == (3, 10)
    assert counter.get_total_flops() == 2 * 3 * summary.macs  # torch counts 2 FLOPs per MAC, per sample


@settings(max_examples=30, deadline=None)
@given(architectures(input_shape=(1, 28, 28)))
def test_device_seam_with_exact_programs_reproduces_the_network(data):
    model = build(parse_architecture(data), *MNIST, seed=1).eval()

    def exact(layer):
        return lambda rows: rows @ layer.matrix().T + (layer.bias if layer.bias is not None else 0)

    programs = {layer.index: exact(layer) for layer in model.matmuls()}
    x = torch.randn(4, *MNIST[0])
    with torch.no_grad():
        reference = model(x)
        realized = forward_draws(model, programs, 3, x)
    assert realized.shape == (3, 4, 10)
    assert torch.allclose(realized, reference.expand(3, 4, 10), atol=1e-4, rtol=1e-4)
    assert all(layer.program is None for layer in model.matmuls())  # detached afterwards


def test_seam_gives_each_draw_its_own_device():
    model = build(parse_architecture(json.loads(open("examples/cnn_digits.json").read())), *DIGITS, seed=0).eval()

    def scaled(layer):
        def run(rows):
            scale = torch.arange(1, rows.shape[0] + 1, dtype=rows.dtype).view(-1, 1, 1)
            return (rows @ layer.matrix().T) * scale + layer.bias

        return run

    x = torch.randn(2, *DIGITS[0])
    with torch.no_grad():
        out = forward_draws(model, {m.index: scaled(m) for m in model.matmuls()}, 2, x)
    assert not torch.allclose(out[0], out[1])
    assert torch.allclose(out[0], model(x), atol=1e-5)


def test_build_is_deterministic_for_a_seed():
    arch = parse_architecture(MLP)
    a, b, c = build(arch, *DIGITS, seed=3), build(arch, *DIGITS, seed=3), build(arch, *DIGITS, seed=4)
    wa, wb, wc = (m.matmuls()[0].weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_hash_ignores_formatting_defaults_names_and_rationale():
    terse = (
        '{"layers":[{"type":"flatten"},{"type":"linear","out_features":32},'
        '{"type":"activation","function":"relu"},{"type":"linear","out_features":10}]}'
    )
    verbose = json.dumps(
        {
            "rationale": "why not",
            "name": "other",
            "layers": [
                {"type": "flatten"},
                {"bias": True, "out_features": 32, "type": "linear"},
                {"function": "relu", "type": "activation"},
                {"out_features": 10, "type": "linear", "bias": True},
            ],
        },
        indent=4,
    )
    assert arch_hash(parse_architecture_json(terse)) == arch_hash(parse_architecture_json(verbose))
    pool_default = {
        "layers": [{"type": "maxpool", "kernel": 2}, {"type": "flatten"}, {"type": "linear", "out_features": 10}]
    }
    pool_explicit = {
        "layers": [
            {"type": "maxpool", "kernel": 2, "stride": 2},
            {"type": "flatten"},
            {"type": "linear", "out_features": 10},
        ]
    }
    assert arch_hash(parse_architecture(pool_default)) == arch_hash(parse_architecture(pool_explicit))
    changed = json.loads(terse)
    changed["layers"][1]["bias"] = False
    assert arch_hash(parse_architecture(changed)) != arch_hash(parse_architecture_json(terse))


def test_structural_distance_properties():
    a = parse_architecture(MLP)
    wider = json.loads(json.dumps(MLP))
    wider["layers"][1]["out_features"] = 64
    b = parse_architecture(wider)
    deeper = json.loads(json.dumps(MLP))
    deeper["layers"][3:3] = [{"type": "linear", "out_features": 32}, {"type": "activation", "function": "relu"}]
    c = parse_architecture(deeper)
    assert structural_distance(a, a) == 0.0
    assert structural_distance(a, b) == structural_distance(b, a) == pytest.approx(0.5)  # a factor of 2 in width
    assert structural_distance(a, c) == pytest.approx(2.0)  # two inserted layers
    assert structural_distance(a, c) <= structural_distance(a, b) + structural_distance(b, c) + 1e-12


@settings(max_examples=40, deadline=None)
@given(architectures())
def test_schema_accepts_every_valid_architecture(data):
    arch = parse_architecture(data)
    jsonschema.validate(json.loads(to_json(arch)), architecture_schema())


def test_schema_is_portable_and_rejects_what_pydantic_rejects():
    schema = architecture_schema()
    text = json.dumps(schema)
    for construct in ('"oneOf"', '"$ref"', '"discriminator"', '"default"'):
        assert construct not in text
    bad = [
        {"name": None, "rationale": None, "layers": [{"type": "linear", "out_features": 0, "bias": True}]},
        {"name": None, "rationale": None, "layers": [{"type": "linear", "out_features": 5, "bias": True, "extra": 1}]},
        {"name": None, "rationale": None, "layers": [{"type": "activation", "function": "swish"}]},
    ]
    for instance in bad:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(instance, schema)
        with pytest.raises(ArchitectureError):
            parse_architecture(instance)


@pytest.mark.parametrize("name", ["mlp_digits", "cnn_digits", "onn_digits"])
def test_examples_are_valid(name):
    arch = load_architecture(f"examples/{name}.json")
    assert analyze(arch, *DIGITS).layers[-1].out_shape == (10,)  # raises ArchitectureError when invalid
    assert analyze(arch, *MNIST).layers[-1].out_shape == (10,)


@pytest.mark.parametrize(("kernel", "stride", "size"), [(2, None, 8), (3, None, 7), (3, 2, 9), (2, 1, 5), (4, 3, 11)])
def test_max_pool_without_autograd_equals_torch_max_pool(kernel: int, stride: int | None, size: int) -> None:
    from uhnas.arch.build import FastMaxPool2d

    pool = FastMaxPool2d(kernel, stride or kernel)
    x = torch.randn(5, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        fast = pool(x)
    assert torch.equal(fast, torch.nn.functional.max_pool2d(x, kernel, stride or kernel))
    grad = x.clone().requires_grad_()
    pool(grad).sum().backward()  # with autograd: torch's kernel, one gradient per window
    assert grad.grad is not None and float(grad.grad.sum()) == fast.numel()


def _two_convs() -> tuple[Network, torch.Tensor]:
    """A padded conv, a strided conv and a linear layer on 2x7x7 inputs, and a batch of 5 inputs."""
    arch = parse_architecture(
        {
            "layers": [
                {"type": "conv2d", "out_channels": 3, "kernel": 3, "padding": 1},
                {"type": "activation", "function": "relu"},
                {"type": "conv2d", "out_channels": 2, "kernel": 3, "stride": 2},
                {"type": "flatten"},
                {"type": "linear", "out_features": 4},
            ]
        }
    )
    return build(arch, (2, 7, 7), 4, seed=0).eval(), torch.randn(5, 2, 7, 7, generator=torch.Generator().manual_seed(1))


def test_conv_rows_reach_programs_shared_across_draws_and_strided() -> None:
    """The first conv with a program gets its im2col rows once for all draws (a stride-0 draw axis); a later
    one gets per-draw rows; both as views that programs must accept, and the network output is unchanged."""
    model, x = _two_convs()
    seen: list[torch.Tensor] = []

    def exact(layer):  # the plain product, recording what it was given
        def run(rows: torch.Tensor) -> torch.Tensor:
            seen.append(rows)
            return rows @ layer.matrix().T + (0 if layer.bias is None else layer.bias)

        return run

    with torch.no_grad():
        out = forward_draws(model, {m.index: exact(m) for m in model.matmuls()}, 3, x)
        plain = model(x)
    assert out.shape == (3, 5, 4)
    assert torch.allclose(out, plain.expand(3, -1, -1), atol=1e-5)
    first, second, last = seen
    assert first.shape == (3, 5 * 49, 18) and first.stride(0) == 0  # shared: the images once
    assert second.shape == (3, 5 * 9, 27) and second.stride(0) != 0 and not second.is_contiguous()
    assert last.shape == (3, 5, 18)


def test_conv_windows_reach_programs_that_take_them_without_an_unfolded_copy() -> None:
    """A program with ``takes_windows`` gets a conv layer's im2col windows as a (draws, B, h, w, C, k, k) view of the
    padded activations (shared across draws for the first layer) and returns NCHW: the network output is unchanged."""
    model, x = _two_convs()
    seen: list[torch.Tensor] = []

    def exact(layer):  # the plain product on windows (conv) or rows (linear), recording what it was given
        def run(rows: torch.Tensor) -> torch.Tensor:
            seen.append(rows)
            if rows.dim() == 3:
                return rows @ layer.matrix().T + layer.bias
            draws, images, h, w = rows.shape[:4]
            out = rows.reshape(draws, images, h, w, -1) @ layer.matrix().T + layer.bias
            return out.permute(0, 1, 4, 2, 3)

        run.takes_windows = True
        return run

    with torch.no_grad():
        out = forward_draws(model, {m.index: exact(m) for m in model.matmuls()}, 3, x)
        plain = model(x)
    assert torch.allclose(out, plain.expand(3, -1, -1), atol=1e-5)
    first, second, last = seen
    assert first.shape == (3, 5, 7, 7, 2, 3, 3) and first.stride(0) == 0  # shared: the images once
    assert second.shape == (3, 5, 3, 3, 3, 3, 3) and second.stride(0) != 0
    assert last.shape == (3, 5, 18)
    # the windows are views of the padded activations (nothing unfolded): fewer elements in memory than they show
    assert first.untyped_storage().nbytes() < first[0].numel() * first.element_size()
    # image 1, output pixel (2, 3), input channel 1, kernel offset (0, 2): the padded input at (1 + 0, 2 + 3)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    assert float(first[0, 1, 2, 3, 1, 0, 2]) == float(padded[1, 1, 2, 5])
