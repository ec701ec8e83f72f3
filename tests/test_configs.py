import subprocess
import sys

import hydra
import pytest
from omegaconf import OmegaConf

from tests.conftest import ROOT, compose

GROUPS = ["data", "model", "reward", "loss", "buffer", "logger", "callbacks", "trainer", "experiment", "paths"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "configs" / group).glob("*.yaml"))


def test_every_group_has_options():
    for group in GROUPS:
        assert options(group), f"configs/{group}/ is empty"


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes_and_resolves(group, option, compose_cfg):
    cfg = compose_cfg([f"{group}={option}"])
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    resolved = OmegaConf.to_container(job, resolve=True)  # no dangling interpolation anywhere
    assert resolved["task"]["max_question_len"] >= resolved["task"]["min_question_len"]
    assert cfg.model.sampler.name_or_path and cfg.loss.name in {"subtb", "tb"}


@pytest.mark.parametrize("option", options("logger"))
def test_logger_options_instantiate(option, compose_cfg):
    from gflownet.runner import instantiate_group

    cfg = compose_cfg([f"logger={option}"])
    loggers = instantiate_group(cfg.get("logger"))
    expected = {"wandb": ["WandbLogger"], "csv": ["CSVLogger"], "many": ["WandbLogger", "CSVLogger"], "none": []}[option]
    assert sorted(type(lg).__name__ for lg in loggers) == sorted(expected)
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            assert lg._wandb_init["mode"] == "offline" if "mode" in lg._wandb_init else lg._offline


@pytest.mark.parametrize("option", options("callbacks"))
def test_callback_options_instantiate(option, compose_cfg):
    from gflownet.runner import instantiate_group

    cfg = compose_cfg([f"callbacks={option}"])
    names = [type(cb).__name__ for cb in instantiate_group(cfg.get("callbacks"))]
    if option == "none":
        assert names == []
    else:
        assert "ModelCheckpoint" in names
    if option == "production_checkpoint":
        assert cfg.callbacks.model_checkpoint.dirpath == f"{ROOT}/production_checkpoints"


def test_cpu_trainer_data_and_memory_buffer_instantiate(compose_cfg):
    cfg = compose_cfg(["trainer=cpu"])
    trainer = hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[])
    assert trainer.max_steps == cfg.trainer.max_steps
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup("fit")
    assert len(dm.val_records) == cfg.data.val_size
    buf = hydra.utils.instantiate(cfg.buffer)
    assert type(buf).__name__ == "InMemoryReplayBuffer" and buf.buffer_size == 128


def test_full_scale_reproduces_the_original_setup(compose_cfg):
    cfg = compose_cfg(["experiment=full_scale"])
    assert cfg.model.sampler.name_or_path == "gpt2-large"
    assert dict(cfg.model.lora) == {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": ["c_attn"]}
    assert cfg.reward.judge._target_ == "gflownet.judges.NLIJudge"
    assert cfg.reward.judge.name_or_path == "NDugar/v3-Large-mnli"
    assert cfg.trainer.devices == 4 and cfg.trainer.accelerator == "gpu"
    assert cfg.trainer.strategy._target_.endswith("DDPStrategy")
    assert cfg.logger.wandb.offline is True
    t = cfg.task
    assert (t.n_samples, t.min_question_len, t.max_question_len, t.lr) == (8, 5, 25, 1e-4)
    assert (t.pf_temp_low, t.pf_temp_high, t.pf_temp_prob, t.use_buffer_prob) == (0.7, 1.5, 0.5, 0.5)
    assert cfg.trainer.accumulate_grad_batches == 8
    assert cfg.reward.likelihood_weight == 0.2 and cfg.loss.name == "subtb" and cfg.loss.subtb_lambda == 1.0
    assert cfg.buffer.buffer_size == 128 and cfg.buffer._target_.endswith("RedisReplayBuffer")
    assert dict(cfg.reward.temperature) == {"start": 1.0, "end": 2.0, "horizon": 2000}


def test_offline_default_uses_only_offline_models(compose_cfg):
    cfg = compose_cfg([])
    assert cfg.model.sampler.name_or_path.startswith("packaged:")
    assert cfg.reward.judge.name_or_path.startswith("packaged:")
    assert cfg.trainer.accelerator == "cpu" and cfg.buffer._target_.endswith("InMemoryReplayBuffer")


def test_redis_buffer_url_comes_from_environment(compose_cfg, monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://:secret@10.0.0.5:6390/2")
    cfg = compose_cfg(["buffer=redis"])
    assert cfg.buffer.url == "redis://:secret@10.0.0.5:6390/2"
    monkeypatch.delenv("REDIS_URL")
    assert compose_cfg(["buffer=redis"]).buffer.url is None


@pytest.mark.parametrize("overrides", [[], ["experiment=full_scale"], ["loss=tb", "buffer=redis", "model=tiny_gpt2", "logger=csv"]])
def test_train_py_prints_composed_config(overrides):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides, "--cfg", "job"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    printed = OmegaConf.create(proc.stdout)
    assert {"task", "model", "reward", "loss", "buffer", "trainer", "data"} <= set(printed)
    if "loss=tb" in overrides:
        assert printed.loss.name == "tb" and printed.model.sampler.name_or_path == "packaged:tiny-gpt2"


def test_unknown_option_is_a_clear_hydra_error():
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "model=gpt5", "--cfg", "job"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode != 0
    assert "Could not find 'model/gpt5'" in proc.stderr and "smollm2_offline" in proc.stderr


@pytest.mark.parametrize("key,value,message", [
    ("use_buffer_prob", 1.5, "task.use_buffer_prob=1.5 is a probability"),
    ("pf_temp_prob", -0.1, "task.pf_temp_prob=-0.1 is a probability"),
    ("pf_temp_high", 0.5, "need 0 < pf_temp_low <= pf_temp_high"),
    ("n_samples", 0, "sample at least 1 question"),
    ("lr", 0.0, "learning rate must be positive"),
])
def test_bad_task_values_are_refused_with_the_reason(key, value, message):
    from gflownet.lightning_module import check_task_config

    task = dict(compose([]).task)
    check_task_config(task)  # the defaults pass
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        check_task_config({**task, key: value})
