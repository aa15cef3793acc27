"""Digital backends: conformance, hand-computed energies, precision emulation, presets and overrides."""

from __future__ import annotations

import pytest
import torch

from uhnas.arch import analyze, parse_architecture
from uhnas.arch.build import build
from uhnas.hardware.registry import BackendError, available_backends, load_backend, load_preset
from uhnas.hardware.testing import assert_conforms

MLP = {
    "layers": [
        {"type": "flatten"},
        {"type": "linear", "out_features": 32},
        {"type": "activation", "function": "relu"},
        {"type": "linear", "out_features": 10},
    ]
}


@pytest.mark.parametrize("name", ["ideal", "gpu-b200-fp16", "cpu-xeon8380-fp32"])
def test_digital_presets_conform(name):
    assert_conforms(load_backend(name), ideal=load_backend("ideal"))


def test_gpu_energy_by_hand():
    summary = analyze(parse_architecture(MLP), (1, 8, 8), 10)
    report = load_backend("gpu-b200-fp16").energy(summary)
    macs = 64 * 32 + 32 * 10  # 2368
    ops = 32  # one ReLU per hidden unit
    params = 64 * 32 + 32 + 32 * 10 + 10  # 2410
    activations = (64 + 32) + (32 + 32) + (32 + 10)  # values read + written per layer (flatten moves none): 202
    expected = {
        "compute": macs * 0.89 / 1000,
        "elementwise": ops * 0.445 / 1000,
        "weight_memory": params * 2 / 64 * 62.4 / 1000,  # fp16 bytes, one fetch per 64 inferences
        "activation_memory": activations * 2 * 0.8275 / 1000,
    }
    assert report.breakdown_nj == pytest.approx(expected, rel=1e-12)
    assert report.total_nj == pytest.approx(sum(expected.values()), rel=1e-12)
    assert report.latency_ns == pytest.approx(macs / 1.125e15 * 1e9)
    with_dropout = {"layers": [*MLP["layers"][:3], {"type": "dropout", "p": 0.5}, MLP["layers"][3]]}
    assert (
        load_backend("gpu-b200-fp16").energy(analyze(parse_architecture(with_dropout), (1, 8, 8), 10)).breakdown_nj
        == report.breakdown_nj
    )


def test_cpu_costs_about_a_hundred_times_the_gpu_per_mac():
    summary = analyze(parse_architecture(MLP), (1, 8, 8), 10)
    cpu, gpu = (load_backend(n).energy(summary).breakdown_nj["compute"] for n in ("cpu-xeon8380-fp32", "gpu-b200-fp16"))
    assert cpu / gpu == pytest.approx(91.7 / 0.89)


def test_precision_emulation_orders_errors():
    model = build(parse_architecture(MLP), (1, 8, 8), 10, seed=0).eval()
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(x)
        errors = {}
        for precision in ("fp32", "bf16", "fp16", "int8"):
            backend = load_backend("ideal", [f"precision={precision}"])
            out = backend.realize(model, 2, torch.Generator().manual_seed(0))(x)
            assert torch.equal(out[0], out[1])  # digital: every draw identical
            errors[precision] = float((out[0] - reference).abs().max())
    assert errors["fp32"] == 0.0
    assert 0 < errors["fp16"] < errors["bf16"]  # fp16 has 3 more mantissa bits than bf16
    assert errors["fp16"] < errors["int8"]


def test_int8_training_programs_pass_gradients_and_fp32_has_none():
    model = build(parse_architecture(MLP), (1, 8, 8), 10, seed=0)
    assert load_backend("ideal").training_programs(model, torch.Generator()) is None
    programs = load_backend("ideal", {"precision": "int8"}).training_programs(model, torch.Generator())
    assert set(programs) == {1, 3}


def test_overrides_and_errors(tmp_path):
    backend = load_backend("gpu-b200-fp16", ["energy_per_mac_pj=2.0"])
    assert backend.describe().constants["energy_per_mac_pj"] == {
        "value": 2.0,
        "unit": "pJ/MAC",
        "source": "user override",
    }
    with pytest.raises(BackendError, match="has no constant 'nope'; known: "):
        load_backend("gpu-b200-fp16", ["nope=1"])
    with pytest.raises(BackendError, match="not of the form key=value"):
        load_backend("gpu-b200-fp16", ["energy_per_mac_pj"])
    with pytest.raises(BackendError, match="energy_per_mac_pj: Input should be greater than 0"):
        load_backend("gpu-b200-fp16", ["energy_per_mac_pj=-1"])
    for bad in ("energy_per_mac_pj=inf", "peak_macs_per_s=.nan"):
        with pytest.raises(BackendError, match="Input should be a finite number"):
            load_backend("gpu-b200-fp16", [bad])
    with pytest.raises(BackendError, match="unknown backend 'tpu'; installed: "):
        load_backend("tpu")


def test_backend_from_a_yaml_file(tmp_path):
    text = load_preset("gpu-b200-fp16").model_dump()
    text["name"] = "my-gpu"
    text["constants"]["energy_per_mac_pj"]["value"] = 0.5
    import yaml

    path = tmp_path / "my-gpu.yaml"
    path.write_text(yaml.safe_dump(text))
    backend = load_backend(str(path))
    assert backend.name == "my-gpu" and backend.params.energy_per_mac_pj == 0.5
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nfamily: digital\ndescription: d\nconstants:\n  precision: {value: fp32}\n")
    with pytest.raises(BackendError, match=r"bad.yaml: constants.precision.source: Field required"):
        load_backend(str(bad))
    with pytest.raises(BackendError, match="no such backend file"):
        load_backend(str(tmp_path / "absent.yaml"))


def test_every_preset_constant_has_a_unit_field_and_a_source():
    for name in available_backends():
        for key, constant in load_preset(name).constants.items():
            assert constant.source.strip(), f"{name}.{key} has no source"


def _numeric_looking(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_every_card_constant_is_typed_never_a_numeric_looking_string():
    # YAML 1.1 reads 1.47e12 (no exponent sign) as a string: presets write 1.47e+12
    for name in available_backends():
        for key, constant in load_backend(name).describe().constants.items():
            value = constant["value"]
            values = value if isinstance(value, list) else [value]  # lists: fit coefficients
            for value in values:
                assert value is None or isinstance(value, (bool, int, float, str)), f"{name}.{key}: {value!r}"
                assert not (isinstance(value, str) and _numeric_looking(value)), f"{name}.{key} is the string {value!r}"


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16", "int8"])
def test_one_computation_stands_for_every_draw_exactly_as_computing_each(precision):
    """A digital device is deterministic: the realisation runs the network once and broadcasts it; the result is
    what computing every draw through the rows path (RealizedModel) gives, convs included: equal up to the float32
    summation order of a batched matmul (rounding to a lower precision hides even that)."""
    from uhnas.hardware.base import RealizedModel

    cnn = parse_architecture({"layers": [
        {"type": "conv2d", "out_channels": 4, "kernel": 3, "padding": 1}, {"type": "activation", "function": "relu"},
        {"type": "maxpool", "kernel": 2}, {"type": "flatten"}, {"type": "linear", "out_features": 10}]})  # fmt: skip
    model = build(cnn, (1, 8, 8), 10, seed=0).eval()
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    realized = load_backend("ideal", [f"precision={precision}"]).realize(model, 3, torch.Generator().manual_seed(0))
    every = RealizedModel(realized.model, realized.programs, realized.draws)
    assert realized.computed_draws == 1 and every.computed_draws == 3  # one pass stands for the three draws
    with torch.no_grad():
        once, each = realized(x), every(x)
    assert once.shape == each.shape == (3, 16, 10)
    torch.testing.assert_close(once, each, rtol=1e-6, atol=1e-6)
    assert torch.equal(once.argmax(-1), each.argmax(-1))
