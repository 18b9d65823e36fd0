//! Every config.json key that transformers' code reads for a supported family, and what lipattn
//! does with it, so that no key that changes the model can be ignored by accident. The table was
//! made from transformers' configuration and modeling code of each family and the shared code
//! they call (configuration, masking, activations); a key it does not list is not read there,
//! so it cannot change the model. docs/models.md#config-keys renders it (a test keeps the two
//! equal), and tests/python/test_transformers_semantics.py checks the keys that matter against
//! transformers itself: honoured ones reproduce its hidden states, refused ones are refused.

use super::config::Family;
use serde_json::{Map, Value};

/// What lipattn does with one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Treatment {
    /// Read by `ModelConfig` and applied to the model lipattn runs.
    Honoured,
    /// Accepted absent or with one of these values (JSON text); any other value makes a model
    /// lipattn does not compute, and the checkpoint is refused naming the key.
    Only(&'static [&'static str]),
    /// Sizes a tensor: lipattn takes the size from the tensor itself (transformers refuses a
    /// checkpoint whose tensors disagree with the key).
    Shape,
    /// Read by transformers, but without effect on the hidden states of an inference pass.
    NoEffect,
}

impl Treatment {
    /// The word docs/models.md uses for the treatment.
    pub fn name(self) -> &'static str {
        match self {
            Treatment::Honoured => "honoured",
            Treatment::Only(_) => "only",
            Treatment::Shape => "shape",
            Treatment::NoEffect => "no effect",
        }
    }
}

/// One key, the families it applies to, and why it is treated so.
#[derive(Clone, Copy, Debug)]
pub struct KeyRule {
    pub key: &'static str,
    pub families: &'static [Family],
    pub treatment: Treatment,
    pub why: &'static str,
}

const ALL: &[Family] = &Family::ALL;
const BERT: &[Family] = &[Family::Bert];
const GPT2: &[Family] = &[Family::Gpt2];
const ROTARY: &[Family] = &Family::ROTARY;
const LLAMA: &[Family] = &[Family::Llama];
const MISTRAL: &[Family] = &[Family::Mistral];
const GEMMA2: &[Family] = &[Family::Gemma2];
const QWEN: &[Family] = &[Family::Qwen2, Family::Qwen3];
const GEMMAS: &[Family] = &[Family::Gemma, Family::Gemma2];
const WINDOWED: &[Family] = &[
    Family::Mistral,
    Family::Qwen2,
    Family::Qwen3,
    Family::Gemma2,
];
const ACT_FAMILIES: &[Family] = &[
    Family::Llama,
    Family::Mistral,
    Family::Qwen2,
    Family::Qwen3,
    Family::Gemma,
];
const BIAS_FAMILIES: &[Family] = &[Family::Llama, Family::Qwen3, Family::Gemma, Family::Gemma2];
const LAYER_TYPES: &[Family] = &[Family::Qwen2, Family::Qwen3, Family::Gemma2];

const fn rule(
    key: &'static str,
    families: &'static [Family],
    treatment: Treatment,
    why: &'static str,
) -> KeyRule {
    KeyRule {
        key,
        families,
        treatment,
        why,
    }
}

use Treatment::{Honoured, NoEffect, Only, Shape};

/// The table: keys of transformers' common configuration first, then BERT's, GPT-2's and the
/// rotary families'.
#[rustfmt::skip]
pub const KEY_RULES: &[KeyRule] = &[
    rule("model_type", ALL, Honoured, "selects the family"),
    rule("architectures", ALL, NoEffect, "names the task heads; lipattn runs the base model"),
    rule("transformers_version", ALL, NoEffect, "provenance"),
    rule("_name_or_path", ALL, NoEffect, "provenance"),
    rule("dtype", ALL, NoEffect, "the precision transformers computes in; lipattn computes the exact model of the stored numbers"),
    rule("torch_dtype", ALL, NoEffect, "older name of dtype"),
    rule("_attn_implementation", ALL, NoEffect, "eager, sdpa and the fused kernels compute the same function"),
    rule("attn_implementation", ALL, NoEffect, "as _attn_implementation"),
    rule("output_hidden_states", ALL, NoEffect, "what is returned, not what is computed"),
    rule("output_attentions", ALL, NoEffect, "what is returned, not what is computed"),
    rule("return_dict", ALL, NoEffect, "what is returned, not what is computed"),
    rule("torchscript", ALL, NoEffect, "export option"),
    rule("use_cache", ALL, NoEffect, "caches keys and values for generation: the same function"),
    rule("chunk_size_feed_forward", ALL, NoEffect, "runs the token-wise feed-forward on chunks of tokens: the same function"),
    rule("is_encoder_decoder", ALL, NoEffect, "read only to choose the generation cache"),
    rule("gradient_checkpointing", ALL, NoEffect, "training memory only"),
    rule("initializer_range", ALL, NoEffect, "initialisation of new weights only"),
    rule("id2label", ALL, NoEffect, "task head"),
    rule("label2id", ALL, NoEffect, "task head"),
    rule("num_labels", ALL, NoEffect, "task head"),
    rule("problem_type", ALL, NoEffect, "task head loss"),
    rule("finetuning_task", ALL, NoEffect, "task head"),
    rule("classifier_dropout", ALL, NoEffect, "task head dropout"),
    rule("bos_token_id", ALL, NoEffect, "tokenisation and generation"),
    rule("eos_token_id", ALL, NoEffect, "tokenisation and generation"),
    rule("pad_token_id", ALL, NoEffect, "the word embedding's padding_idx only affects gradients"),
    rule("sep_token_id", ALL, NoEffect, "tokenisation"),
    rule("decoder_start_token_id", ALL, NoEffect, "generation"),
    rule("tie_word_embeddings", ALL, NoEffect, "ties the language-model head, which lipattn does not run"),
    rule("pruned_heads", ALL, Only(&["{}"]), "transformers 4 removes the listed heads on load"),
    rule("quantization_config", ALL, Only(&["null"]), "the weights are quantised by a scheme lipattn does not implement"),
    rule("per_layer_config", ALL, Only(&["null", "{}"]), "overrides other keys per layer"),
    rule("add_cross_attention", ALL, Only(&["false"]), "adds cross-attention to encoder states"),
    rule("hidden_size", BERT, Honoured, "model width"),
    rule("num_attention_heads", BERT, Honoured, "heads per layer"),
    rule("num_hidden_layers", BERT, Honoured, "blocks"),
    rule("layer_norm_eps", BERT, Honoured, "every LayerNorm's epsilon"),
    rule("hidden_act", BERT, Honoured, "feed-forward activation"),
    rule("intermediate_size", BERT, Shape, "feed-forward width"),
    rule("vocab_size", BERT, Shape, "word embedding rows"),
    rule("max_position_embeddings", BERT, Shape, "position embedding rows"),
    rule("type_vocab_size", BERT, Shape, "token type rows (lipattn adds row 0: one segment)"),
    rule("position_embedding_type", BERT, Only(&["\"absolute\""]), "relative_key and relative_key_query add learned relative-distance terms to the scores"),
    rule("is_decoder", BERT, Only(&["false"]), "makes the encoder causal"),
    rule("is_causal", BERT, NoEffect, "read only by the causal mask, which BERT builds only with is_decoder"),
    rule("tie_last_hidden_states", BERT, NoEffect, "BERT has no final LayerNorm, so both readings of the last state agree"),
    rule("embedding_size", BERT, NoEffect, "only excuses a hidden size that is not a multiple of the heads, which lipattn refuses"),
    rule("hidden_dropout_prob", BERT, NoEffect, "dropout is the identity in evaluation"),
    rule("attention_probs_dropout_prob", BERT, NoEffect, "dropout is the identity in evaluation"),
    rule("n_embd", GPT2, Honoured, "model width"),
    rule("n_head", GPT2, Honoured, "heads per layer"),
    rule("n_layer", GPT2, Honoured, "blocks"),
    rule("hidden_size", GPT2, Honoured, "alias of n_embd (two differing values are refused)"),
    rule("num_attention_heads", GPT2, Honoured, "alias of n_head (two differing values are refused)"),
    rule("num_hidden_layers", GPT2, Honoured, "alias of n_layer (two differing values are refused)"),
    rule("layer_norm_epsilon", GPT2, Honoured, "every LayerNorm's epsilon"),
    rule("activation_function", GPT2, Honoured, "feed-forward activation"),
    rule("scale_attn_weights", GPT2, Honoured, "false: the scores are not divided by sqrt(dk)"),
    rule("scale_attn_by_inverse_layer_idx", GPT2, Honoured, "true: the scores of block l are divided by l + 1 as well"),
    rule("reorder_and_upcast_attn", GPT2, NoEffect, "forms the scores in float32 under mixed precision: the same exact function"),
    rule("is_causal", GPT2, Only(&["true"]), "false makes transformers build a bidirectional mask"),
    rule("tie_last_hidden_states", GPT2, Only(&["null", "true"]), "false makes the last reported hidden state the one before ln_f"),
    rule("n_inner", GPT2, Shape, "feed-forward width (null: 4 n_embd)"),
    rule("vocab_size", GPT2, Shape, "wte rows"),
    rule("n_positions", GPT2, Shape, "wpe rows"),
    rule("max_position_embeddings", GPT2, Shape, "alias of n_positions"),
    rule("n_ctx", GPT2, NoEffect, "legacy, not read by the modeling code"),
    rule("is_decoder", GPT2, NoEffect, "GPT-2 is causal whatever it says"),
    rule("resid_pdrop", GPT2, NoEffect, "dropout is the identity in evaluation"),
    rule("embd_pdrop", GPT2, NoEffect, "dropout is the identity in evaluation"),
    rule("attn_pdrop", GPT2, NoEffect, "dropout is the identity in evaluation"),
    rule("summary_type", GPT2, NoEffect, "multiple-choice head"),
    rule("summary_use_proj", GPT2, NoEffect, "multiple-choice head"),
    rule("summary_activation", GPT2, NoEffect, "multiple-choice head"),
    rule("summary_proj_to_labels", GPT2, NoEffect, "multiple-choice head"),
    rule("summary_first_dropout", GPT2, NoEffect, "multiple-choice head"),
    rule("summary_last_dropout", GPT2, NoEffect, "multiple-choice head"),
    rule("hidden_size", ROTARY, Honoured, "model width"),
    rule("num_attention_heads", ROTARY, Honoured, "query heads per layer"),
    rule("num_hidden_layers", ROTARY, Honoured, "blocks"),
    rule("num_key_value_heads", ROTARY, Honoured, "key/value heads, each shared by a group of query heads (null: one per query head; default Llama all, Mistral 8, Qwen 32, Gemma 16, Gemma 2 4)"),
    rule("head_dim", ROTARY, Honoured, "width of each head (null: hidden_size / heads; default Qwen3 128, Gemma 256)"),
    rule("rms_norm_eps", ROTARY, Honoured, "every RMSNorm's epsilon (1e-6)"),
    rule("hidden_act", ACT_FAMILIES, Honoured, "activation of the feed-forward gate (silu; Gemma gelu_pytorch_tanh, its legacy gelu read as gelu_pytorch_tanh)"),
    rule("hidden_activation", GEMMA2, Honoured, "activation of the feed-forward gate (gelu_pytorch_tanh)"),
    rule("max_position_embeddings", ROTARY, Honoured, "the length past which dynamic rope grows its base, and the default original length of llama3 and yarn; no limit on the input"),
    rule("rope_parameters", ROTARY, Honoured, "rotary embedding: rope_theta and rope_type default, linear, dynamic, llama3 or yarn with their parameters; other types are refused"),
    rule("rope_scaling", ROTARY, Honoured, "older name of rope_parameters, read first when both are given"),
    rule("rope_theta", ROTARY, Honoured, "base of the frequencies when rope_parameters has none (10000)"),
    rule("original_max_position_embeddings", ROTARY, Honoured, "at the top level it replaces rope_parameters' value for llama3 and yarn"),
    rule("partial_rotary_factor", ROTARY, Only(&["null", "1", "1.0"]), "rotates part of each head, which these families' attention cannot broadcast"),
    rule("attention_bias", BIAS_FAMILIES, Honoured, "biases on the query, key, value and output projections"),
    rule("mlp_bias", LLAMA, Honoured, "biases on the gate, up and down projections"),
    rule("sliding_window", WINDOWED, Honoured, "window of the sliding layers: query i sees keys j with i - j < w"),
    rule("use_sliding_window", QWEN, Honoured, "false: sliding_window is ignored"),
    rule("max_window_layers", QWEN, Honoured, "the default layer_types window the layers from this one on"),
    rule("layer_types", LAYER_TYPES, Honoured, "which layers slide (default Gemma 2: the even ones)"),
    rule("layer_types", MISTRAL, NoEffect, "MistralConfig warns and its model windows every layer"),
    rule("query_pre_attn_scalar", GEMMA2, Honoured, "the scores are divided by its square root instead of sqrt(head_dim) (256)"),
    rule("attn_logit_softcapping", GEMMA2, Honoured, "scores s become c tanh(s / c) (50; null: none)"),
    rule("final_logit_softcapping", GEMMA2, NoEffect, "caps the language-model head's logits, which lipattn does not run"),
    rule("use_bidirectional_attention", GEMMAS, Only(&["null", "false"]), "true removes the causal mask"),
    rule("is_causal", ROTARY, Only(&["true"]), "false makes transformers build a bidirectional mask"),
    rule("attention_dropout", ROTARY, NoEffect, "dropout is the identity in evaluation"),
    rule("pretraining_tp", LLAMA, NoEffect, "transformers 5 does not read it; transformers 4 sliced the same products"),
    rule("intermediate_size", ROTARY, Shape, "feed-forward width"),
    rule("vocab_size", ROTARY, Shape, "embed_tokens rows"),
];

impl KeyRule {
    /// The families column of docs/models.md: "all", "rotary" (the six rotary families) or the
    /// families' names.
    pub fn families_label(&self) -> String {
        if self.families == ALL {
            "all".into()
        } else if self.families == ROTARY {
            "rotary".into()
        } else {
            self.families
                .iter()
                .map(|f| f.name())
                .collect::<Vec<_>>()
                .join(", ")
        }
    }
}

/// The rules of `family`, in table order.
pub fn rules(family: Family) -> impl Iterator<Item = &'static KeyRule> {
    KEY_RULES
        .iter()
        .filter(move |r| r.families.contains(&family))
}

/// Refuses a config whose keys make a model lipattn does not compute (`Treatment::Only`).
pub(crate) fn check(family: Family, obj: &Map<String, Value>) -> Result<(), String> {
    for r in rules(family) {
        let (Treatment::Only(accepted), Some(value)) = (r.treatment, obj.get(r.key)) else {
            continue;
        };
        let ok = accepted
            .iter()
            .any(|text| serde_json::from_str::<Value>(text).ok().as_ref() == Some(value));
        if !ok {
            return Err(format!(
                "config key '{}' is {value}: {}, which lipattn does not compute (supported: {} or absent)",
                r.key,
                r.why,
                accepted.join(", ")
            ));
        }
    }
    Ok(())
}
