"""Declared interfaces and single copies of shared helpers (issue: one concern per module)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from course_lib import callbacks, config, export, fsio, monitor, quantize, train
from course_lib.config import ModelConfig
from course_lib.data import DataError, DataPosition, StreamingTokenDataset
from course_lib.dataloading import DistributedChunkBatches
from course_lib.fsio import atomic_path, atomic_write_text
from course_lib.kv_cache import Cache, DynamicCache, PagedKVCache, QuantizedKVCache, StaticCache
from course_lib.lab import envcheck
from course_lib.model import DIYModel


# ---- quick mode ---------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["", "0", "no", "false", "False", "off", " NO "])
def test_quick_mode_off_values_are_off_everywhere(monkeypatch, value):
    monkeypatch.setenv("COURSE_QUICK", value)
    assert config.quick_mode() is False and envcheck.quick_mode() is False, f"COURSE_QUICK={value!r} 应为关闭"
    assert config.pick("full", "quick") == "full"


@pytest.mark.parametrize("value", ["1", "true", "yes", "on", "TRUE"])
def test_quick_mode_on_values_are_on_everywhere(monkeypatch, value):
    monkeypatch.setenv("COURSE_QUICK", value)
    assert config.quick_mode() is True and envcheck.quick_mode() is True


def test_quick_mode_unset_is_off(monkeypatch):
    monkeypatch.delenv("COURSE_QUICK", raising=False)
    assert config.quick_mode() is False and envcheck.quick_mode() is False


def test_quick_mode_has_one_definition():
    assert envcheck.quick_mode is config.quick_mode


# ---- callbacks ----------------------------------------------------------------------------
def test_trainer_and_progress_bar_share_one_callback_base():
    assert train.Callback is callbacks.Callback
    assert issubclass(monitor.ProgressBar, callbacks.Callback)
    hooks = [n for n in vars(callbacks.Callback) if n.startswith("on_")]
    assert len(hooks) == 6
    # ProgressBar overrides only what it uses; the rest comes from the base, not from copies
    for name in ("on_batch", "on_after_backward", "on_checkpoint"):
        assert name not in vars(monitor.ProgressBar), f"ProgressBar 不应复制 {name}"
    x, y = torch.zeros(1), torch.ones(1)
    assert monitor.ProgressBar().on_batch(None, x, y) == (x, y)


# ---- caches -------------------------------------------------------------------------------
def test_cache_interface_is_required():
    # a cache that leaves out one required method cannot even be created
    NoReorder = type(
        "NoReorder",
        (Cache,),
        {"update": lambda self, i, k, v: (k, v), "get_seq_length": lambda self, i=0: 0, "nbytes": lambda self: 0},
    )
    with pytest.raises(TypeError, match="reorder"):
        NoReorder()
    NoBytes = type(
        "NoBytes",
        (Cache,),
        {
            "update": lambda self, i, k, v: (k, v),
            "get_seq_length": lambda self, i=0: 0,
            "reorder": lambda self, index: None,
        },
    )
    with pytest.raises(TypeError, match="nbytes"):
        NoBytes()
    for cls in (DynamicCache, StaticCache, QuantizedKVCache, PagedKVCache):
        assert issubclass(cls, Cache)
        assert not getattr(cls, "__abstractmethods__", None), f"{cls.__name__} leaves {cls.__abstractmethods__}"


# ---- data position ------------------------------------------------------------------------
def test_both_loaders_hold_one_stateful_data_position():
    tokens = torch.arange(4001, dtype=torch.int32)
    s = StreamingTokenDataset(tokens, 10, 4, seed=3)
    m = DistributedChunkBatches.like(s)
    for loader, kind in ((s, "stream"), (m, "map")):
        assert isinstance(loader.position, DataPosition)
        state = loader.state_dict(7)
        assert state == loader.position.state_dict() and state["batches_consumed"] == 7 and state["loader"] == kind
        assert loader.position.state_dict.__code__.co_argcount == 1  # argument-free, like torchtitan's Stateful
    # a position from the other loader is refused, in both directions
    with pytest.raises(DataError, match="loader"):
        s.load_state_dict(m.state_dict(3))
    with pytest.raises(DataError, match="loader"):
        m.load_state_dict(s.state_dict(3))
    with pytest.raises(DataError, match="seed"):
        s.load_state_dict(dict(s.state_dict(3), seed=4))
    # positions saved before the "loader" key existed are stream positions
    old = {k: v for k, v in s.state_dict(5).items() if k != "loader"}
    fresh = StreamingTokenDataset(tokens, 10, 4, seed=3)
    fresh.load_state_dict(old)
    assert fresh.position.batches_consumed == 5
    x, _ = next(iter(fresh))
    assert torch.equal(x, s.make_batch(s.batch_indices(5))[0])


# ---- atomic writes ------------------------------------------------------------------------
def test_atomic_write_replaces_whole_file_or_leaves_the_old_one(tmp_path):
    target = tmp_path / "config.json"
    atomic_write_text(target, json.dumps({"v": 1}))
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"v": 2, "trunc')  # a writer that dies half-way
            raise RuntimeError("crash while writing")
    assert json.loads(target.read_text()) == {"v": 1}
    assert os.listdir(tmp_path) == ["config.json"], "the temporary file must not be left behind"
    atomic_write_text(target, json.dumps({"v": 3}))
    assert json.loads(target.read_text()) == {"v": 3}


def test_artefact_writers_use_the_atomic_helper(tmp_path, monkeypatch):
    """export and quantize write safetensors and config.json through fsio.atomic_path."""
    written = []
    real = fsio.atomic_path

    def spy(path):
        written.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(fsio, "atomic_path", spy)  # atomic_write_text goes through this one
    monkeypatch.setattr(export, "atomic_path", spy)  # save_safetensors
    model = DIYModel(ModelConfig(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=64, max_seq_len=32))
    export.save_inference(model, tmp_path / "a")
    quantize.save_quantized(quantize.quantize_model(model, "int8"), tmp_path / "q")
    export.export_hf_llama(model, tmp_path / "hf")
    assert written.count("model.safetensors") == 3, written
    assert written.count("config.json") == 3, written
