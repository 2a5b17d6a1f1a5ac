
import pytest

from course_lib.config import ConfigError, ModelConfig, TrainConfig, quick_mode


def test_json_round_trip(tmp_path):
    m, t = ModelConfig.small(), TrainConfig.default(lr=1e-3, betas=(0.8, 0.9))
    assert ModelConfig.from_json(m.to_json()) == m
    p = tmp_path / "t.json"
    t.to_json(p)
    assert TrainConfig.from_json(p) == t


@pytest.mark.parametrize("kw, field", [
    (dict(lr=-1.0), "lr"), (dict(batch_size=0), "batch_size"),
    (dict(warmup_steps=700, max_steps=600), "warmup_steps"), (dict(schedule="exp"), "schedule"),
    (dict(dtype="fp8"), "dtype"), (dict(keep_last=0), "keep_last"), (dict(grad_clip=-1.0), "grad_clip"),
])
def test_bad_train_values_name_the_field(kw, field):
    with pytest.raises(ConfigError, match=rf"TrainConfig\.{field}: "):
        TrainConfig(**kw)


def test_bad_model_values_name_the_field():
    with pytest.raises(ConfigError, match="n_kv_heads"):
        ModelConfig(n_heads=4, n_kv_heads=3)
    with pytest.raises(ConfigError, match="d_model"):
        ModelConfig(d_model=130, n_heads=4)


def test_unknown_keys_are_rejected():
    with pytest.raises(ConfigError, match="unknown key"):
        TrainConfig.from_dict({"lr": 1e-3, "learning_rate": 1e-3})
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelConfig.from_json("{bad json")


def test_quick_mode_only_shrinks_sizes(monkeypatch):
    monkeypatch.setenv("COURSE_QUICK", "1")
    assert quick_mode()
    q_m, q_t = ModelConfig.small(), TrainConfig.default()
    monkeypatch.setenv("COURSE_QUICK", "0")
    f_m, f_t = ModelConfig.small(), TrainConfig.default()
    assert q_t.max_steps < f_t.max_steps and q_m.n_layers <= f_m.n_layers
    # same code paths: every non-size field identical
    for k in ("schedule", "dtype", "grad_clip", "lr", "resume", "data"):
        assert getattr(q_t, k) == getattr(f_t, k)
