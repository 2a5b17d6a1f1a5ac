import pytest

from course_lib.config import RESUME_KINDS, ConfigError, ModelConfig, TrainConfig, fields_by_resume, quick_mode


def test_json_round_trip(tmp_path):
    m, t = ModelConfig.small(), TrainConfig.default(lr=1e-3, betas=(0.8, 0.9))
    assert ModelConfig.from_json(m.to_json()) == m
    p = tmp_path / "t.json"
    t.to_json(p)
    assert TrainConfig.from_json(p) == t


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(lr=-1.0), "lr"),
        (dict(batch_size=0), "batch_size"),
        (dict(warmup_steps=700, max_steps=600), "warmup_steps"),
        (dict(schedule="exp"), "schedule"),
        (dict(dtype="fp8"), "dtype"),
        (dict(keep_last=0), "keep_last"),
        (dict(grad_clip=-1.0), "grad_clip"),
    ],
)
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


@pytest.mark.parametrize(
    "cls, kw, field",
    [
        (ModelConfig, {"tie_embeddings": "false"}, "tie_embeddings"),  # a non-empty string is truthy
        (TrainConfig, {"resume": "false"}, "resume"),
        (TrainConfig, {"stop_on_nonfinite": 0}, "stop_on_nonfinite"),
        (TrainConfig, {"lr": "3e-3"}, "lr"),
        (TrainConfig, {"max_steps": 10.5}, "max_steps"),
        (TrainConfig, {"max_steps": True}, "max_steps"),
        (TrainConfig, {"data": 123}, "data"),
        (TrainConfig, {"device": 5}, "device"),
        (TrainConfig, {"seed": 10**30}, "seed"),
        (TrainConfig, {"betas": ["0.9", 0.95]}, "betas"),
        (ModelConfig, {"rope_theta": float("inf")}, "rope_theta"),
        (ModelConfig, {"dropout": float("nan")}, "dropout"),
    ],
)
def test_json_values_are_type_checked(cls, kw, field):
    with pytest.raises(ConfigError, match=rf"{cls.__name__}\.{field}: .*; "):
        cls.from_dict(kw)


def test_numpy_numbers_are_accepted_as_plain_numbers():
    np = pytest.importorskip("numpy")
    t = TrainConfig(max_steps=np.int64(12), warmup_steps=2, lr=np.float32(1e-3), resume=np.bool_(False))
    assert type(t.max_steps) is int and type(t.lr) is float and t.resume is False
    assert TrainConfig.from_json(t.to_json()) == t


def test_every_field_has_help_and_resume_metadata():
    for cls in (ModelConfig, TrainConfig):
        for f in cls.__dataclass_fields__.values():
            assert f.metadata.get("help") and f.metadata.get("resume") in RESUME_KINDS, f"{cls.__name__}.{f.name}"
    assert "max_steps" in fields_by_resume(TrainConfig, "schedule")
    assert "out_dir" in fields_by_resume(TrainConfig, "free")
    assert set(fields_by_resume(ModelConfig, "match")) == set(ModelConfig.__dataclass_fields__)
