"""lipattn.Model on the rotary decoder families: hidden states and token ids as transformers gives
them, and the BERT/GPT-2 attention analyses refused with a ModelError naming the feature."""
import numpy as np
import pytest

import lipattn
from tiny_decoders import TEXT, TOL, build, config, ids_of, load, reference, rel, save


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma2"])
def test_model_hidden_states_equal_transformers(tmp_path, family):
    save(build(config(family)), tmp_path)
    want = reference(load(tmp_path))
    model = lipattn.Model(tmp_path)
    assert model.family == family and model.causal
    np.testing.assert_array_equal(model.tokenize(TEXT), ids_of(TEXT))
    states = model.hidden_states(TEXT)
    assert len(states) == len(want)
    assert max(rel(g, w) for g, w in zip(states, want)) < TOL
    assert rel(model.hidden_states(TEXT, layer=1), want[1]) < TOL


def test_attention_analyses_refuse_rotary_models(tmp_path):
    save(build(config("llama", num_hidden_layers=1)), tmp_path)
    model = lipattn.Model(tmp_path)
    for call in (lambda: model.attention_layer(0), lambda: model.analyze(TEXT, ns=[8]),
                 lambda: lipattn.AttentionLayer.from_model(tmp_path, 0)):
        with pytest.raises(lipattn.ModelError, match="model_type 'llama'.*rotary.*lipattn hidden"):
            call()
