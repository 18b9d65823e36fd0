"""lipattn.Model.from_transformers on live transformers models, and torch tensors into the layer
functions.

A model made from a live transformers model must be the model of the directory save_pretrained
writes for it: the same config.json text, hidden states and attention layers equal bit for bit,
and transformers' own hidden states to the tolerance of tests/python/test_decoder_families.py.
"""
import json
import os

import numpy as np
import pytest
import torch
import transformers

import lipattn
import lipattn._torch
from test_decoder_families import CASES
from tiny_decoders import TEXT, TOKENIZER, TOL, VOCAB, build, config, ids_of, reference, rel

IDS = ids_of(TEXT)


def bert():
    return build(transformers.BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=24,
                                         max_position_embeddings=40), causal_lm=False)


def gpt2():
    return build(transformers.GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=40))


def fast_tokenizer():
    return transformers.PreTrainedTokenizerFast(tokenizer_object=TOKENIZER, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>")


# Every variant of tests/python/test_decoder_families.py, the bare (no head) Llama, BERT and GPT-2.
BUILDERS = {f"{c[0]}-{i}": (lambda c=c: build(config(c[0], **c[1]))) for i, c in enumerate(CASES)}
BUILDERS["llama-bare"] = lambda: build(config("llama"), causal_lm=False)
BUILDERS["bert"] = bert
BUILDERS["gpt2"] = gpt2


def assert_states_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_hidden_states_equal_the_saved_directory_and_transformers(tmp_path, name):
    model = BUILDERS[name]()
    mem = lipattn.Model.from_transformers(model)
    model.save_pretrained(tmp_path)
    saved = lipattn.Model(tmp_path)
    # The config.json text save_pretrained writes is what the key table reads.
    assert json.loads(lipattn._torch.model_parts(model)[1]) == json.loads((tmp_path / "config.json").read_text())
    assert (mem.family, mem.num_layers, mem.hidden_size, mem.num_heads, mem.causal) == \
        (saved.family, saved.num_layers, saved.hidden_size, saved.num_heads, saved.causal)
    states = mem.hidden_states(ids=IDS)
    assert_states_equal(states, saved.hidden_states(ids=IDS))
    np.testing.assert_array_equal(mem.hidden_states(ids=IDS, layer=1), states[1])
    want = reference(model)
    assert max(rel(g, w) for g, w in zip(states, want)) < TOL


def test_minilm_and_its_tokenizer_equal_the_checkpoint(minilm):
    """The real checkpoint: transformers' BertModel of it (what a sentence-transformers MiniLM holds
    as model[0].auto_model) with its fast tokenizer, against the directory itself."""
    hf = transformers.BertModel.from_pretrained(minilm)
    tok = transformers.AutoTokenizer.from_pretrained(minilm)
    mem, saved = lipattn.Model.from_transformers(hf, tok), lipattn.Model(minilm)
    text = "The quick brown fox jumps over the lazy dog, twice."
    np.testing.assert_array_equal(mem.tokenize(text), saved.tokenize(text))
    np.testing.assert_array_equal(mem.tokenize(text), tok(text)["input_ids"])
    assert_states_equal(mem.hidden_states(text), saved.hidden_states(text))
    x = saved.hidden_states(text, layer=2)
    np.testing.assert_array_equal(mem.attention_layer(2).forward(x), saved.attention_layer(2).forward(x))


@pytest.mark.parametrize("builder", [bert, gpt2])
def test_attention_layers_equal_the_saved_directory(tmp_path, builder):
    model = builder()
    mem = lipattn.Model.from_transformers(model)
    model.save_pretrained(tmp_path)
    saved = lipattn.Model(tmp_path)
    x = np.random.default_rng(0).standard_normal((6, 16))
    for layer in range(mem.num_layers):
        for head in (None, 1):
            a, b = mem.attention_layer(layer, head=head), saved.attention_layer(layer, head=head)
            wa, wb = a.weights(), b.weights()
            assert wa.keys() == wb.keys()
            for k in wa:
                np.testing.assert_array_equal(wa[k], wb[k])
            assert (a.causal, a.score_divisor_sq) == (b.causal, b.score_divisor_sq)
            np.testing.assert_array_equal(a.forward(x), b.forward(x))


def test_rotary_attention_layer_is_the_directory_one(tmp_path):
    model = build(config("llama", num_hidden_layers=1))
    mem = lipattn.Model.from_transformers(model).attention_layer(0)
    model.save_pretrained(tmp_path)
    disk = lipattn.Model(tmp_path).attention_layer(0)
    assert isinstance(mem, lipattn.RotaryLayer) and isinstance(disk, lipattn.RotaryLayer)
    x = np.random.default_rng(2).standard_normal((5, model.config.hidden_size))
    np.testing.assert_array_equal(mem.forward(x), disk.forward(x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_half_and_single_precision_models(tmp_path, dtype):
    model = build(config("gemma2")).to(dtype)
    mem = lipattn.Model.from_transformers(model)
    assert all(t.dtype == dtype for t in model.state_dict().values() if t.is_floating_point())
    model.save_pretrained(tmp_path)
    assert_states_equal(mem.hidden_states(ids=IDS), lipattn.Model(tmp_path).hidden_states(ids=IDS))


def test_with_a_tokenizer_text_runs_as_from_the_directory(tmp_path):
    model = build(config("llama"))
    tok = fast_tokenizer()
    mem = lipattn.Model.from_transformers(model, tok)
    np.testing.assert_array_equal(mem.tokenize(TEXT), tok(TEXT)["input_ids"])
    np.testing.assert_array_equal(mem.tokenize(TEXT), IDS)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    saved = lipattn.Model(tmp_path)
    np.testing.assert_array_equal(mem.tokenize(TEXT, max_tokens=7), saved.tokenize(TEXT, max_tokens=7))
    assert_states_equal(mem.hidden_states(TEXT), saved.hidden_states(TEXT))
    # A tokenizers.Tokenizer serves as well.
    np.testing.assert_array_equal(lipattn.Model.from_transformers(model, TOKENIZER).tokenize(TEXT), IDS)


def test_without_a_tokenizer_text_is_refused_naming_the_missing_tokenizer():
    mem = lipattn.Model.from_transformers(gpt2())
    assert mem.path is None
    assert repr(mem).startswith("Model(<from_transformers GPT2LMHeadModel>, family='gpt2'")
    for call in (lambda: mem.tokenize(TEXT), lambda: mem.hidden_states(TEXT),
                 lambda: mem.analyze(TEXT, ns=[8])):
        with pytest.raises(ValueError, match="no tokenizer was given to Model.from_transformers"):
            call()
    assert len(mem.hidden_states(ids=IDS)) == 3


def test_bad_tokenizers_and_models_are_refused_by_name():
    model = gpt2()
    with pytest.raises(TypeError, match="fast tokenizer.*got builtins.str"):
        lipattn.Model.from_transformers(model, "gpt2")
    with pytest.raises(TypeError, match="PreTrainedModel.*got torch.nn.modules.linear.Linear"):
        lipattn.Model.from_transformers(torch.nn.Linear(3, 4))
    with pytest.raises(TypeError, match="got builtins.dict"):
        lipattn.Model.from_transformers({})

    class Transformer(torch.nn.Module):  # sentence-transformers' first module holds the model here
        def __init__(self, inner):
            super().__init__()
            self.auto_model = inner
    with pytest.raises(TypeError, match=r"sentence-transformers model: pass .*model\[0\]\.auto_model, a BertModel"):
        lipattn.Model.from_transformers(torch.nn.Sequential(Transformer(bert())))
    t5 = transformers.T5Model(transformers.T5Config(vocab_size=32, d_model=8, d_kv=4, d_ff=16, num_layers=1,
                                                    num_heads=2))
    with pytest.raises(lipattn.ModelError, match="<from_transformers T5Model>: unsupported architecture: model_type 't5'"):
        lipattn.Model.from_transformers(t5)
    meta = transformers.GPT2LMHeadModel(model.config).to("meta")
    with pytest.raises(ValueError, match="meta device"):
        lipattn.Model.from_transformers(meta)


def test_the_copy_of_the_weights_is_checked_against_the_memory_budget():
    model = gpt2()
    lipattn.set_max_memory(1000)
    try:
        with pytest.raises(MemoryError, match="tensors of <from_transformers GPT2LMHeadModel>"):
            lipattn.Model.from_transformers(model)
    finally:
        lipattn.set_max_memory(None)
    assert lipattn.Model.from_transformers(model).num_layers == 2


def test_the_callers_model_is_left_as_it_was():
    model = build(config("qwen2"))
    before = model.config.to_dict()
    lipattn.Model.from_transformers(model)
    assert model.config.to_dict() == before
    assert model.config.architectures is None


def test_nothing_is_written(tmp_path, monkeypatch):
    dirs = {k: tmp_path / k for k in ("cwd", "home", "tmp", "cache")}
    for d in dirs.values():
        d.mkdir()
    monkeypatch.chdir(dirs["cwd"])
    monkeypatch.setenv("HOME", str(dirs["home"]))
    monkeypatch.setenv("TMPDIR", str(dirs["tmp"]))
    monkeypatch.setenv("XDG_CACHE_HOME", str(dirs["cache"]))
    monkeypatch.setattr("tempfile.tempdir", None)
    mem = lipattn.Model.from_transformers(build(config("gemma")), fast_tokenizer())
    mem.hidden_states(TEXT)
    for d in dirs.values():
        assert os.listdir(d) == [], d


# torch tensors into the layer functions


X = np.random.default_rng(3).standard_normal((7, 8))


def torch_variants(x):
    """(what, tensor with x's values): every layout and autograd state a caller may hold."""
    big = torch.zeros((2 * x.shape[0], 3 * x.shape[1]), dtype=torch.from_numpy(x).dtype)
    big[::2, 1::3] = torch.from_numpy(x)
    return [("row-major", torch.from_numpy(x.copy())),
            ("column-major", torch.from_numpy(np.asfortranarray(x))),
            ("transposed view", torch.from_numpy(np.ascontiguousarray(x.T)).T),
            ("non-contiguous", big[::2, 1::3]),
            ("requires_grad", torch.tensor(x, requires_grad=True)),
            ("parameter", torch.nn.Parameter(torch.from_numpy(x.copy())))]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cpu_tensors_are_viewed_not_copied(dtype):
    x = X.astype(dtype)
    for what, t in torch_variants(x):
        a = lipattn._torch.tensor_to_numpy(t)
        assert np.shares_memory(a, t.detach().numpy()), what
        np.testing.assert_array_equal(a, x)


def layer_results(layer, x, g):
    lin = layer.linearize(x)
    return [layer.forward(x), layer.forward(x, causal=True), layer.jvp(x, g), layer.vjp(x, g),
            lin.jvp(g), lin.vjp(g), lin.output, layer.gamma(x[:3], x),
            float(layer.local_constant(x, seed=1)), layer.query_jacobian(x[0], lipattn.Measure.uniform(x))]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_tensors_give_the_results_of_numpy_arrays(dtype):
    layer = lipattn.random_layer(8, 2, kernel="dot", seed=4)
    x, g = X.astype(dtype), np.cos(X).astype(dtype)
    want = layer_results(layer, x, g)
    for (what, t), (_, tg) in zip(torch_variants(x), torch_variants(g)):
        got = layer_results(layer, t, tg)
        for a, b in zip(got, want):
            assert np.asarray(a).dtype == np.asarray(b).dtype, what
            np.testing.assert_array_equal(a, b, err_msg=what)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_forward_reads_column_major_inputs_in_place(dtype):
    """The forward pass reads a Fortran-ordered array, or a tensor with column-major strides, where
    it lies (no copy counted), and gives the copying path's result bit for bit."""
    from lipattn._lipattn import _input_copies

    layer = lipattn.random_layer(8, 2, kernel="dot", seed=4)
    x = X.astype(dtype)
    want = {c: layer.forward(np.ascontiguousarray(x), causal=c) for c in (False, True)}
    variants = dict(torch_variants(x))
    for what, arr, copies in [("C order", np.ascontiguousarray(x), 1), ("Fortran order", np.asfortranarray(x), 0),
                              ("tensor, column-major", variants["column-major"], 0),
                              ("tensor, transposed view", variants["transposed view"], 0),
                              ("tensor, row-major", variants["row-major"], 1),
                              ("tensor, non-contiguous", variants["non-contiguous"], 1)]:
        for causal in (False, True):
            before = _input_copies()
            got = layer.forward(arr, causal=causal)
            assert _input_copies() - before == copies, what
            assert got.dtype == x.dtype
            np.testing.assert_array_equal(got, want[causal], err_msg=what)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_tensors_are_widened_to_float32(dtype):
    layer = lipattn.random_layer(8, 2, kernel="dot", seed=4)
    t, tg = torch.from_numpy(X).to(dtype), torch.from_numpy(np.cos(X)).to(dtype)
    x, g = t.float().numpy(), tg.float().numpy()
    for a, b in zip(layer_results(layer, t, tg), layer_results(layer, x, g)):
        assert np.asarray(a).dtype == np.asarray(b).dtype
        np.testing.assert_array_equal(a, b)
    assert layer.forward(t).dtype == np.float32


def test_bad_tensors_are_refused_by_dtype():
    layer = lipattn.random_layer(8, 2, kernel="dot", seed=4)
    with pytest.raises(TypeError, match="tokens: arrays of dtype bool"):
        layer.forward(torch.ones((3, 8), dtype=torch.bool))
    with pytest.raises(TypeError, match="tokens: arrays of dtype complex128"):
        layer.forward(torch.ones((3, 8), dtype=torch.complex128))
    with pytest.raises(ValueError, match="meta device"):
        layer.forward(torch.ones((3, 8), device="meta"))
    # Integer tensors become float64, as integer arrays do.
    np.testing.assert_array_equal(layer.forward(torch.ones((3, 8), dtype=torch.int32)), layer.forward(np.ones((3, 8))))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_tensors_are_copied_to_the_cpu():
    layer = lipattn.random_layer(8, 2, kernel="dot", seed=4)
    np.testing.assert_array_equal(layer.forward(torch.from_numpy(X).cuda()), layer.forward(X))
