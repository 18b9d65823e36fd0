"""PyTorch objects turned into what the Rust core reads: a transformers model into the parts of its
checkpoint (config.json's text, its named tensors, tokenizer.json's text), a tensor into a NumPy
array. torch is imported only here, when such an object is passed, so the package does not need it.
"""
import copy
import sys


def tensor_to_numpy(t):
    """A NumPy array with `t`'s values: detached from autograd, moved to the CPU (a copy, for a
    CUDA tensor), float16 and bfloat16 widened to float32 (exact; NumPy has no bfloat16). A CPU
    float32/float64 tensor is viewed, not copied, whatever its strides."""
    import torch

    t = t.detach()
    if t.device.type == "meta":
        raise ValueError("a tensor on the meta device has no values (load the model's weights first)")
    if t.device.type != "cpu":
        t = t.cpu()
    if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float32)
    return t.numpy()


def _family_hint(model):
    inner = getattr(model, "auto_model", None)
    if inner is None and hasattr(model, "__getitem__"):
        try:
            inner = getattr(model[0], "auto_model", None)
        except Exception:  # noqa: BLE001 (any indexing failure only means: no hint)
            inner = None
    if inner is not None:
        return f" (a sentence-transformers model: pass its transformers model, model[0].auto_model, a {type(inner).__name__})"
    return ""


def model_parts(model, tokenizer=None):
    """(label, config.json text, [(name, array)], tokenizer.json text or None) of a live
    transformers model, with the config.json and tensor names `save_pretrained` would write, so
    that the core reads them as it reads the saved directory. Nothing is written to disk."""
    # An object made by torch exists only once torch is imported: anything else is refused
    # without importing it.
    torch = sys.modules.get("torch")
    config = getattr(model, "config", None)
    if torch is None or not isinstance(model, torch.nn.Module) or not hasattr(config, "to_json_string"):
        kind = f"{type(model).__module__}.{type(model).__qualname__}"
        raise TypeError(
            f"Model.from_transformers takes a transformers PreTrainedModel (with a .config); got {kind}"
            + _family_hint(model))
    label = f"<from_transformers {type(model).__name__}>"
    # save_pretrained sets these two on the model's config before writing config.json; here they
    # are set on a copy, so that the caller's model is left as it was.
    config = copy.deepcopy(config)
    config.dtype = str(model.dtype).split(".")[1]
    config.architectures = [type(model).__name__]
    if "transformers_weights" in config:
        delattr(config, "transformers_weights")
    config_json = config.to_json_string(use_diff=True)
    tensors = []
    for name, t in model.state_dict().items():
        # Integer buffers (BERT's position ids) are no weights; the loader reads float tensors only.
        if not t.is_floating_point():
            continue
        tensors.append((name, tensor_to_numpy(t.contiguous())))
    return label, config_json, tensors, _tokenizer_json(tokenizer)


def _tokenizer_json(tokenizer):
    if tokenizer is None:
        return None
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if not hasattr(backend, "to_str"):
        raise TypeError(
            f"tokenizer: a transformers fast tokenizer (with .backend_tokenizer) or a tokenizers.Tokenizer is "
            f"needed; got {type(tokenizer).__module__}.{type(tokenizer).__qualname__}")
    return backend.to_str()
