"""The converter's tables: the family registry, the mode table, default weights said aloud, the training config."""

from __future__ import annotations

import json

import pytest

from .conftest import EXAMPLE, REPO

pytest.importorskip("tensorflow", reason="the converter needs TensorFlow")
pytest.importorskip("h5py", reason="the converter needs h5py")

from convert.errors import ConvertError
from convert.families import NAMES, family, family_of_weights
from convert.modes import MODES, mode
from convert.modes import NAMES as MODE_NAMES


def test_every_registered_family_is_complete_and_named_as_registered():
    for name in NAMES:
        fam = family(name)
        assert fam.name == name
        assert callable(fam.plan) and callable(fam.load_weights) and callable(fam.train_architecture)
        assert fam.default_weights("none").path.name.endswith(".h5")
    with pytest.raises(ConvertError, match="unknown model family 'rnnoise'.*dtln, poconet"):
        family("rnnoise")
    with pytest.raises(ConvertError, match="no family's weights"):
        family_of_weights(object())


def test_the_runtime_knows_every_family_the_converter_writes():
    src = (REPO / "edge" / "families" / "__init__.py").read_text()
    for name in NAMES:
        assert f'"{name}":' in src, f"edge.families has no per-block step for {name}"


def test_mode_table_is_the_one_validation():
    assert MODE_NAMES == ("none", "float16", "dynamic", "int8", "int16x8")
    assert len({m.folder for m in MODES.values()}) == len(MODES)  # one release folder each
    assert [m.name for m in MODES.values() if m.calibrated] == ["int8", "int16x8"]
    assert mode("dynamic") is MODES["dynamic"] and mode(MODES["int8"]) is MODES["int8"]
    with pytest.raises(ConvertError, match="unknown quantisation mode 'int4'; choose one of none, float16"):
        mode("int4")
    assert MODES["int8"].runtimes_for({"LOG", "FULLY_CONNECTED"}) == ["ai-edge-litert", "tensorflow>=2.16"]
    assert "tflite-runtime>=2.14" in MODES["int8"].runtimes_for({"FULLY_CONNECTED"})
    assert MODES["none"].runtimes_for({"LOG"}) == list(MODES["none"].runtimes)  # float LOG runs everywhere


def test_integer_modes_refuse_to_convert_without_calibration():
    from convert.export import to_tflite
    from convert.families.dtln import build_streaming_models, stream_options_for

    from .conftest import small_weights

    w = small_weights()
    model, io = build_streaming_models(w, stream_options_for("int16x8", w.config))[0]
    with pytest.raises(ConvertError, match="mode int16x8 needs calibration data"):
        to_tflite(model, io.inputs, "int16x8")


def test_dtln_graph_changes_follow_the_mode_table():
    from convert.families.dtln import DTLNConfig, StreamOptions, stream_options_for

    cfg = DTLNConfig(norm_mag=True)
    assert stream_options_for("none", cfg) == StreamOptions()
    assert stream_options_for("dynamic", cfg) == StreamOptions()
    i16 = stream_options_for("int16x8", cfg)
    assert i16.split_states and i16.clip_cell == 8.0 and i16.frame_rms_norm and i16.log_mag_outside
    assert not i16.bases_outside and not i16.mask_logits
    assert stream_options_for("int8", cfg) == StreamOptions(split_states=True, clip_cell=8.0, frame_rms_norm=True,
                                                            log_mag_outside=True, bases_outside=True,
                                                            mask_logits=True, bias_first=True)


def test_default_weights_are_said_not_chosen_silently(tmp_path, capsys):
    from convert.__main__ import main

    shipped = family("dtln").default_weights("int8").path
    if not shipped.exists():
        pytest.skip(f"the shipped int8 weights are not at {shipped}")
    taken = tmp_path / "taken"
    taken.mkdir()
    audio = ["--verify-audio", str(EXAMPLE), "--calib-audio", str(EXAMPLE)]
    assert main(["--quantize", "int8", "--output", str(taken), *audio]) == 2  # stops at the existing folder
    err = capsys.readouterr().err
    assert "no --weights: converting the shipped" in err and "dtln-finetuned-int8/dtln_weights.h5" in err
    assert "fine-tuned for full int8" in err and "exists; pass --force" in err
    assert main(["--quantize", "dynamic", "--output", str(taken), *audio]) == 2
    err = capsys.readouterr().err
    assert "dtln-finetuned/dtln_weights.h5" in err and "the default model's weights" in err
    assert "int8" not in err.split("exists")[0]
    assert main(["--quantize", "int8", "--output", str(taken), "-q", *audio]) == 2
    assert "no --weights" not in capsys.readouterr().err  # -q: the bundle path only (here: the error only)


def _stored_run(tmp_path, **config):
    from convert.train_config import TrainConfig, stored

    out = tmp_path / "run"
    out.mkdir()
    cfg = TrainConfig(out=str(out), **config)
    (out / "state.json").write_text(json.dumps({"epoch": 3, "lr": 2.5e-4, "lr_bad_epochs": 2,
                                                "config": stored(cfg)}))
    return out


def test_resume_goes_on_with_the_stored_recipe_and_refuses_another_model(tmp_path):
    from convert.train_config import resolve

    out = _stored_run(tmp_path, units=16, batch=4, spectral=0.5, max_hours=1.0)
    cfg, state = resolve({"out": str(out), "resume": True, "epochs": 9})
    assert (cfg.units, cfg.batch, cfg.spectral, cfg.epochs) == (16, 4, 0.5, 9)
    assert cfg.max_hours is None  # a run-only option: never taken from the store
    assert state["lr"] == 2.5e-4 and state["epoch"] == 3
    cfg, state = resolve({"out": str(out), "resume": True, "lr": 1e-4})
    assert state["lr"] == 1e-4 and state["lr_bad_epochs"] == 0  # a given --lr restarts the schedule
    for key, value, flag in (("units", 32, "--units 16"), ("family", "poconet", "--family dtln"),
                             ("spectral", 0.0, "--spectral 0.5")):
        with pytest.raises(ConvertError, match=flag):
            resolve({"out": str(out), "resume": True, key: value})
    assert resolve({"out": str(out), "resume": True, "units": 16})[0].units == 16  # the same value is fine


def test_a_state_with_unknown_options_is_refused_by_name(tmp_path):
    from convert.train_config import resolve

    out = _stored_run(tmp_path)
    state = json.loads((out / "state.json").read_text())
    state["config"]["warp"] = 9
    (out / "state.json").write_text(json.dumps(state))
    with pytest.raises(ConvertError, match=r"state.json: unknown training options \['warp'\]"):
        resolve({"out": str(out), "resume": True})


def test_dtln_mask_logits_need_the_bases_outside():
    """With stage 2's bases in the graph, stage 2 applies its own mask: logits there would be a wrong mask."""
    from convert.families.dtln import StreamOptions, build_streaming_models

    from .conftest import small_weights

    with pytest.raises(ConvertError, match="mask_logits needs bases_outside"):
        build_streaming_models(small_weights(), StreamOptions(mask_logits=True))
