"""``model_kwargs`` written for a GPU, made to work on the machine at hand.

The user's ``create_model(model_config)`` splats ``model_config["model_kwargs"]`` into
``from_pretrained``; the engine hands it ``for_device(model_kwargs)`` instead of the typed
dict (the typed one still names the base model: runs that typed the same kwargs share it):

=============================================  ===========================================
typed                                          becomes
=============================================  ===========================================
``torch_dtype`` / ``dtype`` = a 16-bit dtype   ``torch.float32`` on a machine without a
(``torch.bfloat16``, ``torch.float16``,         usable GPU, as the training args' CPU
``"bfloat16"``, ``"float16"``, ``"half"``) or   fallbacks train in float32: CPU results match
``"auto"`` (the checkpoint's dtype, often       float32 references, and 16-bit CPU kernels can
16-bit)                                         be many times slower (a 512x576 -> 1536 linear
                                                layer's forward+backward here: float32 120 ms,
                                                bfloat16 64 ms, float16 864 ms; issue 9 saw
                                                bfloat16 ~55x slower on its CPU); kept on a GPU
``load_in_4bit`` / ``load_in_8bit`` = True      ``quantization_config=BitsAndBytesConfig(
(+ ``bnb_4bit_*`` keys)                         load_in_4bit=True, bnb_4bit_...=...)`` on a
                                                GPU (transformers 5 removed the flags:
                                                ``TypeError: ... unexpected keyword argument
                                                'load_in_4bit'``); dropped on CPU, where
                                                bitsandbytes cannot run: the base loads
                                                unquantized
``load_in_4bit`` / ``load_in_8bit`` = False     dropped (asks for nothing; the flag alone
                                                would crash today's ``from_pretrained``)
=============================================  ===========================================

Each change is one ``messages`` line (``ConfigTranslationWarning``, as the training-args
translation in ``automl/translate.py``). With a ``quantization_config`` of the user's own, the
flags are dropped and theirs is kept. ``sixteen_bit_warning(model)`` says (or None) whether a
model ``create_model`` returned on a CPU-only machine still holds 16-bit weights (e.g. its
``create_model`` ignored ``model_kwargs``).
"""

from __future__ import annotations

from typing import Any

DTYPE_KEYS = ("torch_dtype", "dtype")
QUANTIZATION_FLAGS = ("load_in_4bit", "load_in_8bit")
_BNB_PREFIXES = ("bnb_4bit_", "llm_int8_")
_SIXTEEN_BIT_NAMES = {"bfloat16", "float16", "half", "bf16", "fp16"}
_NO_GPU = "no usable GPU (torch.cuda.is_available() is False)"


def _is_sixteen_bit_or_auto(value: Any) -> bool:
    import torch

    if isinstance(value, torch.dtype):
        return value in (torch.bfloat16, torch.float16)
    return isinstance(value, str) and (value.lower() in _SIXTEEN_BIT_NAMES or value.lower() == "auto")


def for_device(model_kwargs: dict[str, Any], gpu: bool) -> tuple[dict[str, Any], list[str]]:
    """The kwargs ``create_model`` receives on this machine and one message per change (module
    docstring). ``model_kwargs`` itself is not modified."""
    import torch

    kwargs = dict(model_kwargs)
    messages: list[str] = []
    for key in DTYPE_KEYS:
        value = kwargs.get(key)
        if not gpu and _is_sixteen_bit_or_auto(value):
            kwargs[key] = torch.float32
            messages.append(
                f"model_kwargs: {key}={value!r} -> torch.float32: {_NO_GPU}; training runs in float32 on "
                "CPU (16-bit CPU kernels can be many times slower)"
            )
    wanted = [flag for flag in QUANTIZATION_FLAGS if kwargs.get(flag) is True]
    bnb_options = {k: kwargs.pop(k) for k in list(kwargs) if k.startswith(_BNB_PREFIXES)}
    for flag in QUANTIZATION_FLAGS:
        if kwargs.get(flag) is False:
            del kwargs[flag]
            messages.append(
                f"model_kwargs: {flag}=False dropped (asks for nothing; today's transformers has no "
                "such argument)"
            )
    if not wanted:
        if bnb_options:
            messages.append(
                f"model_kwargs: {sorted(bnb_options)} dropped: no load_in_4bit/load_in_8bit=True asks "
                "for bitsandbytes"
            )
        return kwargs, messages
    for flag in wanted:
        del kwargs[flag]
    given = ", ".join(f"{flag}=True" for flag in wanted)
    if kwargs.get("quantization_config") is not None:
        messages.append(f"model_kwargs: {given} dropped: the quantization_config given is used")
    elif not gpu:
        messages.append(
            f"model_kwargs: {given} dropped: {_NO_GPU}; bitsandbytes quantization needs CUDA, so the model "
            "loads unquantized"
        )
    else:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(**{flag: True for flag in wanted}, **bnb_options)
        options = "".join(f", {k}={v!r}" for k, v in bnb_options.items())
        messages.append(
            f"model_kwargs: {given} -> quantization_config=BitsAndBytesConfig({given}{options}) (today's "
            "transformers takes quantization settings only as a quantization_config)"
        )
    return kwargs, messages


def effective_model_kwargs(model_kwargs: dict[str, Any], gpu: bool) -> dict[str, Any]:
    """``for_device``'s kwargs alone (for the run's tracked params)."""
    return for_device(model_kwargs, gpu)[0]


def sixteen_bit_warning(model: Any) -> str | None:
    """A one-line warning if ``model`` (on a CPU-only machine) holds bfloat16/float16 weights."""
    import torch

    dtypes = sorted(
        {
            str(p.dtype).removeprefix("torch.")
            for p in model.parameters()
            if p.dtype in (torch.bfloat16, torch.float16)
        }
    )
    if not dtypes:
        return None
    return (
        f"create_model returned a model with {'/'.join(dtypes)} weights on a machine without a usable GPU: "
        "it trains in 16 bits on CPU (16-bit CPU kernels can be many times slower, and results differ from "
        "float32); load it with the model_kwargs the engine passes (float32 here) or call model.float()"
    )


__all__ = ["DTYPE_KEYS", "QUANTIZATION_FLAGS", "effective_model_kwargs", "for_device", "sixteen_bit_warning"]
