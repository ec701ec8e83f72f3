"""Build everything from a composed Hydra config and run ``trainer.fit`` (called by ``train.py``)."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig

log = logging.getLogger(__name__)


CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def compose_config(overrides: list[str] | None = None, output_dir: str | Path | None = None,
                   config_name: str = "train") -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` with ``overrides`` as ``python train.py OVERRIDES`` would
    (the hydra node included and set as the current Hydra config), outside a Hydra app: for scripts,
    benchmarks and tests. ``output_dir`` sets ``hydra.runtime.output_dir`` (the run's directory);
    ``config_name="reward_model"`` composes scripts/train_reward_model.py's config."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides or []), return_hydra_config=True)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


def load_run_config(run_dir: str | Path) -> DictConfig:
    """A training run's composed config (``RUN/.hydra/config.yaml``), for the scripts that read a run
    (evaluate, smooth, sample, export, rescore). A directory that is not a run, or a run from before
    the task-independent core, is refused saying what to do."""
    from omegaconf import OmegaConf

    path = Path(run_dir) / ".hydra" / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --run-dir must be a training run's output directory")
    cfg = OmegaConf.load(path)
    if "module" not in cfg:
        raise ValueError(f"{path} predates the task-independent core (no 'module' block): use the version of this "
                         "project that trained it")
    return cfg


def apply_checkpoint(module, state: dict, where: str | Path) -> None:
    """Load a checkpoint's weights (``state``, as ``torch.load`` read it from ``where``) into the module
    built from its run's config. Checkpoints hold only the trainable weights, so loading is not
    strict; a weight the module does not have means another model, and is refused."""
    missing = module.load_state_dict(state["state_dict"], strict=False)
    if missing.unexpected_keys:
        raise ValueError(f"checkpoint {where} does not fit this run's model: unexpected {missing.unexpected_keys[:3]}")


def refusal(err: BaseException) -> BaseException | None:
    """The error to report as a refusal (its message, and the fix it names, without a traceback), or
    None for an error that is a bug and keeps its traceback. Refusals are the errors the project
    raises for bad input, configuration or environment: ``ValueError`` (and its subclasses),
    ``FileNotFoundError``, ``PermissionError``, ``ConnectionError``, ``KeyError``, and the project's
    own (a model not available offline, a backend that refuses, a rank-0 reward failure, a
    checkpoint that cannot be written). A Hydra instantiation error is unwrapped to its cause."""
    from gflownet.core.checkpointing import CheckpointWriteError
    from gflownet.core.distributed import Rank0Error
    from gflownet.core.modeling import ModelNotAvailableError

    kinds = (ValueError, FileNotFoundError, PermissionError, ConnectionError, KeyError, ModelNotAvailableError,
             Rank0Error, CheckpointWriteError)
    try:
        from gflownet.tasks.prompt_inversion.backends import BackendError
        kinds += (BackendError,)
    except ImportError:  # pragma: no cover
        pass
    err = unwrapped(err)
    return err if isinstance(err, kinds) else None


def unwrapped(err: BaseException) -> BaseException:
    """A Hydra instantiation error's cause (the error the instantiated code raised), else ``err``."""
    from hydra.errors import InstantiationException

    seen = 0
    while isinstance(err, InstantiationException) and err.__cause__ is not None and seen < 5:
        err, seen = err.__cause__, seen + 1
    return err


def main_with_refusals(fn, cfg) -> None:
    """Run ``fn(cfg)``; a refusal (``refusal``) prints ``error: <message>`` and exits with status 1,
    instead of a page of Lightning and Hydra traceback. Any other error (a bug) prints its traceback
    and exits with status 1 too, so that no exception reaches Hydra, which would echo the
    command-line overrides ("Error executing job with overrides: [...]") with any secret in them.
    Whatever is printed has the config's secrets (``secrets_in``) replaced by ``<redacted>``.
    ``HYDRA_FULL_ERROR=1`` prints the full traceback for refusals too."""
    import sys
    import traceback

    try:
        fn(cfg)
    except Exception as err:  # noqa: BLE001 - sorted into refusals and bugs below
        try:
            secrets = secrets_in(cfg)
        except Exception:  # noqa: BLE001 - a config that cannot be read for secrets: hide nothing more
            secrets = []
        shown = refusal(err)
        if shown is not None and os.environ.get("HYDRA_FULL_ERROR") != "1":
            message = shown.args[0] if isinstance(shown, KeyError) and shown.args else str(shown)
            print(redact(f"error: {message}\n(the full traceback: HYDRA_FULL_ERROR=1 python train.py ...)", secrets),
                  file=sys.stderr, flush=True)
        else:
            print(redact(traceback.format_exc(), secrets), file=sys.stderr, flush=True)
            if shown is None:
                print(redact(f"error: an unexpected {type(unwrapped(err)).__name__} stopped the run (the traceback above); if "
                             "your settings look right, please report it with that traceback", secrets), file=sys.stderr, flush=True)
        sys.exit(1)


def quiet_libraries() -> None:
    """Hide download/loading progress bars and import-time noise that would bury the training log."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_SILENT", "true")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # The frozen base model is in eval mode by design (only LoRA trains; scoring switches modes).
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")
    warnings.filterwarnings("ignore", message=r".*overridden `transfer_batch_to_device`")
    warnings.filterwarnings("ignore", message=r".*`is_gradient_checkpointing` is deprecated")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def instantiate_group(group: DictConfig | None) -> list:
    """Instantiate every ``_target_`` entry of a config group such as ``logger`` or ``callbacks``."""
    if not group:
        return []
    return [hydra.utils.instantiate(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node]


def build_module(cfg: DictConfig):
    """The LightningModule from ``cfg.module`` (task, loss, optimizer and scheduler factories, the
    reward factory that only rank 0 calls, and the buffer factory that ``setup`` calls)."""
    return hydra.utils.instantiate(cfg.module)


SECRET_KEYS = {"password", "passwd", "api_key", "apikey", "secret", "token", "access_token", "auth_token", "hf_token",
               "credentials"}
MIN_SECRET_CHARS = 8  # shorter values ("local", a test key) are not redacted: replacing them would mangle the files


def _is_secret_key(key: str) -> bool:
    key = key.lower()
    return key in SECRET_KEYS or key.endswith(("_password", "_api_key", "_secret"))


def secrets_in(cfg: DictConfig) -> list[str]:
    """Values that must not be written with a run: every string under a secret-named key anywhere in
    the config (``password``, ``api_key``, ``token``, ``secret``, ...: ``buffer.password``,
    ``reward.backend.api_key``) and the password of every URL (``buffer.url`` / ``REDIS_URL``), of
    at least ``MIN_SECRET_CHARS`` characters. Interpolations are resolved where they can be (an
    API key read from the environment is a secret too)."""
    from urllib.parse import urlparse

    from omegaconf import OmegaConf

    found: list[str] = []

    def value_of(node, key):
        try:
            return node[key]
        except Exception:  # an unresolvable interpolation: nothing resolved, nothing to hide
            return None

    def walk(node) -> None:
        keys = list(node.keys()) if OmegaConf.is_dict(node) else range(len(node)) if OmegaConf.is_list(node) else []
        for key in keys:
            if key == "hydra":
                continue
            value = value_of(node, key)
            if OmegaConf.is_config(value):
                walk(value)
            elif isinstance(value, str) and value:
                if isinstance(key, str) and _is_secret_key(key):
                    found.append(value)
                if "://" in value:
                    try:
                        password = urlparse(value).password
                    except ValueError:
                        password = None
                    if password:
                        found.append(password)

    walk(cfg)
    return sorted({s for s in found if len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True)


def redact(text: str, secrets: list[str]) -> str:
    """``text`` with each secret replaced by ``<redacted>`` (longest first, as ``secrets_in`` orders them)."""
    for secret in secrets:
        text = text.replace(secret, "<redacted>")
    return text


@contextlib.contextmanager
def redacted_argv(secrets: list[str]):
    """``sys.argv`` with each secret replaced by ``<redacted>`` inside the block (restored after: a
    DDP launcher re-runs the real command line)."""
    import sys

    saved = list(sys.argv)
    sys.argv[:] = [redact(arg, secrets) for arg in saved]
    try:
        yield
    finally:
        sys.argv[:] = saved


def redact_saved_configs(output_dir: str | Path, secrets: list[str]) -> int:
    """Replace each secret in the configs Hydra saved with the run (``.hydra/*.yaml``: the composed
    config, the overrides, Hydra's own) by ``<redacted>``; returns how many files changed."""
    changed = 0
    for path in sorted(Path(output_dir, ".hydra").glob("*.yaml")):
        text = path.read_text()
        clean = redact(text, secrets)
        if clean != text:
            # each process its own temporary file: under DDP every rank redacts the same run directory at
            # once, and a shared name let one rank move the other's file away (FileNotFoundError, seen once)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(clean)
            tmp.replace(path)
            changed += 1
    return changed


def run_training(cfg: DictConfig) -> dict:
    quiet_libraries()
    secrets = secrets_in(cfg)
    if secrets:  # a password given on the command line is in Hydra's saved configs: take it out
        redact_saved_configs(cfg.paths.output_dir, secrets)
    pl.seed_everything(int(cfg.seed), workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    module = build_module(cfg)
    loggers = instantiate_group(cfg.get("logger"))
    callbacks = instantiate_group(cfg.get("callbacks"))
    from gflownet.core.checkpointing import AtomicCheckpointIO

    # checkpoints are written next to their target and renamed into place: whole or absent
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks,
                                                  plugins=[AtomicCheckpointIO()])
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path} does not exist: pass an existing checkpoint or ckpt_path=null")
    if secrets:  # W&B records the command line when its run starts: start it now, with the secrets taken out
        with redacted_argv(secrets):
            for lg in loggers:
                if isinstance(lg, pl.loggers.WandbLogger):
                    lg.experiment  # noqa: B018 - starts the run (rank 0; a dummy elsewhere)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    summary = {"global_step": trainer.global_step, "output_dir": str(cfg.paths.output_dir)}
    for cb in callbacks:
        if isinstance(cb, pl.callbacks.ModelCheckpoint):
            summary["last_checkpoint"] = cb.last_model_path or cb.best_model_path
    for lg in loggers:
        if isinstance(lg, pl.loggers.WandbLogger):
            summary["wandb_dir"] = lg.experiment.dir if hasattr(lg.experiment, "dir") else str(lg.save_dir)
    if trainer.is_global_zero:
        n_rows = int(cfg.get("final_probe_samples", 0))
        if n_rows > 0:
            print_probe_table(module, datamodule, n_rows)
        for key, value in summary.items():
            log.info("%s: %s", key, value)
    return summary


def print_probe_table(module, datamodule, n_rows: int) -> None:
    """Sample for held-out records and print the samples with their reward components."""
    from rich.console import Console
    from rich.table import Table

    records = (datamodule.val_records or datamodule.train_records)[: max(1, min(4, n_rows))]
    per_record = max(1, math.ceil(n_rows / len(records)))
    table = Table(title=f"Samples after {module.global_step} steps (temperature 1)", show_lines=True)
    rollouts = [module.rollout([r], per_record, collective=False) for r in records]
    texts, comps = sorted(rollouts[0].texts), sorted(rollouts[0].components)
    for col in ("record", "sample", *texts, *comps, "log R"):
        table.add_column(col, overflow="fold")
    for record, ro in zip(records, rollouts):
        terminal = ro.terminal_log_r
        for i in range(len(ro)):
            table.add_row(module.task.describe(record), ro.samples[i], *[ro.texts[k][i] or "(empty)" for k in texts],
                          *[f"{float(ro.components[k][i]):.2f}" for k in comps], f"{float(terminal[i]):.2f}")
    Console(width=160).print(table)
