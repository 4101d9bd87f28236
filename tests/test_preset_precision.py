"""Sweep presets never force bf16 where the device does not compute it: their `amp = true` rows (e.g.
jpeg-ghosts' ghosts-regions-w48) train in fp32, with a warning, on CPUs without bf16 units."""
import pytest
from realfake.jobs.tasks.sweep import load_spec
from realfake.jobs.tasks.sweep_presets import names


def _amp_rows():
    for preset in names():
        for config in load_spec(preset=preset)["configs"]:
            if config["train"].get("amp"):
                yield preset, config


def test_the_ghosts_regions_w48_row_asks_for_amp_and_nothing_else_of_precision():
    rows = {f"{p}:{c['name']}": c for p, c in _amp_rows()}
    assert "jpeg-ghosts:ghosts-regions-w48" in rows
    for name, config in rows.items():  # precision is asked for only through --amp, which follows the device
        assert not {"precision"} & (set(config["train"]) | set(config["evaluate"])), name


@pytest.mark.parametrize("native", [True, False])
def test_amp_rows_train_in_bf16_only_where_the_cpu_computes_it(monkeypatch, caplog, native):
    from types import SimpleNamespace

    import realfake.jobs.tasks.train as train_module
    from realfake.jobs.tasks.train_config import TrainConfig

    monkeypatch.setattr(train_module, "native_bf16", lambda device: native)
    for preset, config in _amp_rows():
        options = {k: v for k, v in config["train"].items() if k in TrainConfig.__dataclass_fields__}
        train_config = TrainConfig(**{**options, "image_size": 64, "epochs": 1}).resolved()
        data = SimpleNamespace(train_loader=[None] * 2)  # what the LR schedule asks of the data: len()
        parts = train_module.build_training(train_config, data, "cpu")
        assert parts.amp is native, f"{preset}:{config['name']}"
    assert ("training in fp32" in caplog.text) is not native
