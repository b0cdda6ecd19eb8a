//! `smollm2`: SmolLM2-135M-Instruct text generation — the GGUF weights of shared/ASSETS.md section 4
//! (fetched by `scripts/fetch-assets.sh smollm2`, pinned by hash) read by [`super::gguf`], dequantised to
//! f32 and run by the packed llama forward of [`super::llama`]; the byte-level BPE tokenizer built with the
//! `tokenizers` crate from the vocabulary and merges inside the GGUF file; ChatML prompts.
//!
//! A job's input is a [`GenerationJob`] (prompt token ids, most new tokens, stop rule, sampling), its
//! output a [`Generation`] (token ids and why it stopped), in the layouts of [`super::generation`].
//! Redundant outputs are compared exactly within a numeric class; [`SmolLm2::check`] is a cheaper check
//! that also holds across classes (one teacher-forced pass over prompt and output), tested here but not yet
//! used by the quorum.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use fleetmesh_protocol::ModelId;
use fleetmesh_protocol::messages::{AgreementRule, DType, ModelManifest, TensorSpec};
use tokenizers::Tokenizer;

pub use super::generation::{
    CheckError, Generation, GenerationJob, MAX_NEW, MAX_PROMPT, MAX_TOP_K, Sampling, StopReason, StopRule,
};
use super::generation::{JOB_HEADER, malformed, pick, top_k};
use super::gguf::{Gguf, GgufError};
use super::llama::{Config, Llama, Step};
use super::{InferenceError, Model, WeightsSource, check_weights, manifest_for};

/// The model's name.
pub const NAME: &str = "smollm2";
/// The weights file inside `assets/smollm2/`.
pub const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// blake3 of the GGUF file (its sha256 is pinned in scripts/fetch-assets.sh).
pub const WEIGHTS_BLAKE3: &str = "5f4fa13bfc6dd4a91fd00e22974a9c4e9ed628fd7d7f307398ddf30260d6b2c3";
/// The teacher-forced check accepts a claimed greedy token whose logit is at most this far below the
/// position's best logit: ten times the largest first-step logit difference measured between this
/// forward and PyTorch's (below 1e-3), so honest cars of other numeric classes pass and a token that is
/// not a near-tie for first is refused.
pub const CHECK_MARGIN: f32 = 1e-2;
/// The system prompt SmolLM2's chat template adds when a conversation has none.
pub const DEFAULT_SYSTEM: &str = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

/// The SmolLM2 model. The tokenizer and manifest are ready when it is built; the weights (540 MB as f32)
/// are dequantised on first use, so a node that serves other jobs does not pay for them.
pub struct SmolLm2 {
    config: Config,
    weights: WeightsSource,
    llama: OnceLock<Result<Llama, InferenceError>>,
    tokenizer: Tokenizer,
    eos: u32,
    manifest: ModelManifest,
    id: ModelId,
}

fn read(path: &Path) -> Result<Vec<u8>, InferenceError> {
    std::fs::read(path).map_err(|e| weights_error(format!("{}: {e}", path.display())))
}

fn weights_error(reason: impl std::fmt::Display) -> InferenceError {
    InferenceError::Weights {
        model: NAME.into(),
        reason: reason.to_string(),
    }
}

/// Builds the byte-level BPE tokenizer of a `gpt2`-style GGUF vocabulary (SmolLM2's pre-tokenizer: single
/// digits, then GPT-2's byte-level split; its control tokens as special tokens).
pub fn tokenizer_from_gguf(g: &Gguf) -> Result<Tokenizer, GgufError> {
    use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::digits::Digits;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::{AddedToken, PreTokenizerWrapper};
    let expect = |key: &str, want: &'static str| -> Result<(), GgufError> {
        if g.string(key)? != want {
            return Err(GgufError::Missing {
                key: key.into(),
                expected: want,
            });
        }
        Ok(())
    };
    expect("tokenizer.ggml.model", "gpt2")?;
    expect("tokenizer.ggml.pre", "smollm")?;
    let tokens = g.strings("tokenizer.ggml.tokens")?;
    let types = g.ints("tokenizer.ggml.token_type")?;
    let bad = |key: &str, expected| GgufError::Missing {
        key: key.into(),
        expected,
    };
    if types.len() != tokens.len() {
        return Err(bad("tokenizer.ggml.token_type", "one type per token"));
    }
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.to_string(), id as u32))
        .collect();
    if vocab.len() != tokens.len() {
        return Err(bad("tokenizer.ggml.tokens", "distinct tokens"));
    }
    let merges = g
        .strings("tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .filter(|(a, b)| vocab.contains_key(*a) && vocab.contains_key(*b))
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| bad("tokenizer.ggml.merges", "pairs of known tokens"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|_| bad("tokenizer.ggml.merges", "merges of the vocabulary"))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
        PreTokenizerWrapper::Digits(Digits::new(true)),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
    ])));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    // Control tokens (type 3): `<|im_start|>`, `<|im_end|>`, ... are matched whole in text.
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, ty)| **ty == 3)
        .map(|(t, _)| AddedToken::from(t.to_string(), true))
        .collect();
    tokenizer.add_special_tokens(special).map_err(|_| {
        bad(
            "tokenizer.ggml.token_type",
            "control tokens the tokenizer accepts",
        )
    })?;
    Ok(tokenizer)
}

/// The ChatML text of a conversation of `(role, content)` turns, ending with the assistant's turn opened
/// (SmolLM2's chat template: its default system prompt when the first turn is not a system turn).
pub fn chat_prompt(turns: &[(&str, &str)]) -> String {
    let mut text = String::new();
    if turns.first().is_none_or(|(role, _)| *role != "system") {
        text.push_str(&format!("<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n"));
    }
    for (role, content) in turns {
        text.push_str(&format!("<|im_start|>{role}\n{content}<|im_end|>\n"));
    }
    text.push_str("<|im_start|>assistant\n");
    text
}

impl SmolLm2 {
    /// Opens the model in `assets/smollm2/` (weights loaded on first use); `None` if it was not fetched.
    pub fn from_assets(assets: &Path) -> Result<Option<Self>, InferenceError> {
        let path = assets.join(NAME).join(FILE);
        if !path.exists() {
            return Ok(None);
        }
        let bytes = read(&path)?;
        check_weights(NAME, &bytes, WEIGHTS_BLAKE3)?;
        Self::new(&bytes, WeightsSource::File(path)).map(Some)
    }

    /// Builds the model from the bytes of its GGUF file (fetched from peers), loading the weights now. Only
    /// the file [`WEIGHTS_BLAKE3`] pins is accepted: a peer cannot make a worker parse, load and register
    /// another file under this model's name.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, InferenceError> {
        check_weights(NAME, bytes, WEIGHTS_BLAKE3)?;
        let model = Self::new(bytes, WeightsSource::Memory(Arc::from(bytes)))?;
        model.llama()?;
        Ok(model)
    }

    fn new(bytes: &[u8], weights: WeightsSource) -> Result<Self, InferenceError> {
        let g = Gguf::parse(bytes).map_err(weights_error)?;
        let config = Config::from_gguf(&g).map_err(weights_error)?;
        let tokenizer = tokenizer_from_gguf(&g).map_err(weights_error)?;
        let eos = g.uint("tokenizer.ggml.eos_token_id").map_err(weights_error)?;
        if eos as usize >= config.vocab {
            return Err(weights_error("the end-of-turn token is outside the vocabulary"));
        }
        let manifest = manifest_for(
            NAME,
            1,
            "llama-gguf-v1",
            bytes,
            super::CHUNK_SIZE,
            TensorSpec {
                dtype: DType::U8,
                shape: vec![(JOB_HEADER + 4 * MAX_PROMPT) as u32],
            },
            TensorSpec {
                dtype: DType::U8,
                shape: vec![(3 + 4 * MAX_NEW) as u32],
            },
            AgreementRule::Exact,
        );
        let id = manifest.id();
        Ok(Self {
            config,
            weights,
            llama: OnceLock::new(),
            tokenizer,
            eos: eos as u32,
            manifest,
            id,
        })
    }

    /// The language model, its weights loaded (and checked against the manifest) on the first call.
    pub fn llama(&self) -> Result<&Llama, InferenceError> {
        self.llama
            .get_or_init(|| {
                let bytes = match &self.weights {
                    WeightsSource::Memory(b) => b.to_vec(),
                    WeightsSource::File(path) => read(path)?,
                };
                if *blake3::hash(&bytes).as_bytes() != self.manifest.weights_hash {
                    return Err(weights_error(
                        "the weights file changed since the model was opened",
                    ));
                }
                let g = Gguf::parse(&bytes).map_err(weights_error)?;
                Llama::from_gguf(&bytes, &g).map_err(weights_error)
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The model's shape.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The end-of-turn token.
    pub fn eos(&self) -> u32 {
        self.eos
    }

    /// The token ids of a text as it is (special tokens written in it are matched).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, InferenceError> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| weights_error(format!("tokenizer: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of token ids (special tokens kept).
    pub fn decode(&self, ids: &[u32]) -> Result<String, InferenceError> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| weights_error(format!("tokenizer: {e}")))
    }

    /// The prompt ids of a one-turn chat with the user's `message`.
    pub fn chat_ids(&self, message: &str) -> Result<Vec<u32>, InferenceError> {
        self.encode(&chat_prompt(&[("user", message)]))
    }

    /// The job a prompt asks for: the chat template applied unless `raw`, greedy at temperature 0, seeded
    /// sampling otherwise; stops at the end of the turn.
    pub fn job_for(&self, prompt: &super::Prompt) -> Result<GenerationJob, InferenceError> {
        let bad = |what: &str| malformed(0, what);
        let ids = if prompt.raw {
            self.encode(&prompt.text)?
        } else {
            self.chat_ids(&prompt.text)?
        };
        if ids.is_empty() {
            return Err(bad("the prompt is empty"));
        }
        if ids.len() > MAX_PROMPT {
            return Err(bad("the prompt has more than 2048 tokens"));
        }
        if prompt.max_tokens == 0 || usize::from(prompt.max_tokens) > MAX_NEW {
            return Err(bad("max_tokens must be 1..=512"));
        }
        let sampling = if prompt.temperature == 0.0 {
            Sampling::Greedy
        } else if prompt.temperature > 0.0
            && prompt.temperature <= 10.0
            && (1..=MAX_TOP_K).contains(&prompt.top_k)
        {
            Sampling::Seeded {
                temperature: prompt.temperature,
                top_k: prompt.top_k,
                seed: prompt.seed,
            }
        } else {
            return Err(bad("temperature must be 0 or in (0, 10], top_k in 1..=1000"));
        };
        let job = GenerationJob {
            prompt: ids,
            max_new: prompt.max_tokens,
            stop: StopRule::Eos,
            sampling,
        };
        self.check_job(&job)?;
        Ok(job)
    }

    /// Checks that a job fits this model's context.
    fn check_job(&self, job: &GenerationJob) -> Result<(), InferenceError> {
        if job.prompt.is_empty() {
            return Err(malformed(JOB_HEADER - 2, "empty prompt"));
        }
        let fits = job.prompt.len() + usize::from(job.max_new) <= self.config.context;
        if job.prompt.len() > MAX_PROMPT || !fits {
            return Err(malformed(
                JOB_HEADER - 2,
                "prompt and new tokens exceed the context",
            ));
        }
        Ok(())
    }

    /// Runs several jobs together (batched decoding: every unfinished sequence advances one token per
    /// step), calling `on_token(job, token)` as each token is picked; stops early, with
    /// [`InferenceError::Cancelled`], when `cancel` says so (polled before every step). Each job's tokens
    /// are the same bits as when it runs alone.
    pub fn generate(
        &self,
        jobs: &[GenerationJob],
        mut on_token: impl FnMut(usize, u32),
        cancel: Option<&dyn Fn() -> bool>,
    ) -> Result<Vec<Generation>, InferenceError> {
        for job in jobs {
            self.check_job(job)?;
        }
        let llama = self.llama()?;
        let mut caches: Vec<_> = jobs.iter().map(|_| llama.cache()).collect();
        let mut out: Vec<Generation> = jobs
            .iter()
            .map(|_| Generation {
                tokens: Vec::new(),
                stop: StopReason::MaxTokens,
            })
            .collect();
        let mut done = vec![false; jobs.len()];
        let mut logits = {
            let mut steps: Vec<Step<'_>> = jobs
                .iter()
                .zip(caches.iter_mut())
                .map(|(j, cache)| Step {
                    tokens: &j.prompt,
                    cache,
                    all_logits: false,
                })
                .collect();
            llama.forward(&mut steps)
        };
        let mut active: Vec<usize> = (0..jobs.len()).collect();
        loop {
            if cancel.is_some_and(|c| c()) {
                return Err(InferenceError::Cancelled);
            }
            for (row, &j) in active.iter().enumerate() {
                let job = &jobs[j];
                let step = out[j].tokens.len();
                let token = pick(&logits[row], job.sampling, step);
                out[j].tokens.push(token);
                on_token(j, token);
                if job.stop == StopRule::Eos && token == self.eos {
                    out[j].stop = StopReason::Eos;
                    done[j] = true;
                } else if out[j].tokens.len() == usize::from(job.max_new) {
                    done[j] = true;
                }
            }
            active.retain(|j| !done[*j]);
            if active.is_empty() {
                return Ok(out);
            }
            let last: Vec<[u32; 1]> = active
                .iter()
                .map(|j| [*out[*j].tokens.last().unwrap_or(&0)])
                .collect();
            // `active` is in job order, so the steps (and the logits rows) are too.
            let mut steps: Vec<Step<'_>> = Vec::with_capacity(active.len());
            for (j, cache) in caches.iter_mut().enumerate().filter(|(j, _)| !done[*j]) {
                let row = steps.len();
                debug_assert_eq!(active[row], j);
                steps.push(Step {
                    tokens: &last[row],
                    cache,
                    all_logits: false,
                });
            }
            logits = llama.forward(&mut steps);
        }
    }

    /// The teacher-forced check of a claimed generation: one pass over the prompt and the claimed tokens
    /// gives every position's logits; a greedy job's token must be within [`CHECK_MARGIN`] of the best
    /// logit, a sampled job's among its top-k; the length and stop reason must fit the job.
    pub fn check(&self, job: &GenerationJob, claimed: &Generation) -> Result<(), CheckError> {
        let n = claimed.tokens.len();
        let shape = |why: &str| Err(CheckError::Shape(why.into()));
        if n == 0 || n > usize::from(job.max_new) {
            return shape("token count outside 1..=max_new");
        }
        let ends_in_eos = claimed.tokens.last() == Some(&self.eos);
        match (job.stop, claimed.stop) {
            (StopRule::MaxTokens, StopReason::Eos) => return shape("the job does not stop at end of turn"),
            (_, StopReason::MaxTokens) if n != usize::from(job.max_new) => {
                return shape("stopped before max_new without end of turn");
            }
            (StopRule::Eos, StopReason::MaxTokens) if ends_in_eos => {
                return shape("end of turn not reported");
            }
            (_, StopReason::Eos) if !ends_in_eos => return shape("end of turn reported without its token"),
            _ => {}
        }
        if job.stop == StopRule::Eos && claimed.tokens[..n - 1].contains(&self.eos) {
            return shape("tokens after the end of turn");
        }
        if let Some(t) = claimed.tokens.iter().find(|t| **t as usize >= self.config.vocab) {
            return Err(CheckError::Shape(format!("token {t} outside the vocabulary")));
        }
        if self.check_job(job).is_err() {
            return shape("the job does not fit the context");
        }
        let mut input = job.prompt.clone();
        input.extend_from_slice(&claimed.tokens[..n - 1]);
        let llama = self.llama().map_err(|e| CheckError::Model(e.to_string()))?;
        let mut cache = llama.cache();
        let past = job.prompt.len() - 1;
        // The prompt's first tokens need no logits: they fill the cache, then one pass yields the rest.
        if past > 0 {
            llama.forward(&mut [Step {
                tokens: &input[..past],
                cache: &mut cache,
                all_logits: false,
            }]);
        }
        let logits = llama.forward(&mut [Step {
            tokens: &input[past..],
            cache: &mut cache,
            all_logits: true,
        }]);
        let vocab = self.config.vocab;
        for (position, (row, token)) in logits[0].chunks_exact(vocab).zip(&claimed.tokens).enumerate() {
            let ok = match job.sampling {
                Sampling::Greedy => {
                    let best = top_k(row, 1)[0];
                    let gap = row[best as usize] - row[*token as usize];
                    if gap > CHECK_MARGIN {
                        return Err(CheckError::Token {
                            position,
                            token: *token,
                            best,
                            gap,
                        });
                    }
                    true
                }
                Sampling::Seeded { top_k: k, .. } => top_k(row, usize::from(k)).contains(token),
            };
            if !ok {
                let best = top_k(row, 1)[0];
                return Err(CheckError::Token {
                    position,
                    token: *token,
                    best,
                    gap: row[best as usize] - row[*token as usize],
                });
            }
        }
        Ok(())
    }
}

impl Model for SmolLm2 {
    fn manifest(&self) -> &ModelManifest {
        &self.manifest
    }

    fn id(&self) -> ModelId {
        self.id
    }

    fn check_input(&self, input: &[u8]) -> Result<(), InferenceError> {
        let job = GenerationJob::decode(input, self.config.vocab)?;
        self.check_job(&job)
    }

    fn weights_source(&self) -> Option<WeightsSource> {
        Some(self.weights.clone())
    }

    fn max_units(&self, input: &[u8]) -> u64 {
        GenerationJob::decode(input, self.config.vocab).map_or(1, |job| u64::from(job.max_new))
    }

    fn output_units(&self, output: &[u8]) -> u64 {
        Generation::decode(output).map_or(1, |g| g.tokens.len().max(1) as u64)
    }

    fn prompt_input(&self, prompt: &super::Prompt) -> Option<Result<Vec<u8>, InferenceError>> {
        Some(self.job_for(prompt).map(|job| job.encode()))
    }

    fn verifies_outputs(&self) -> bool {
        true
    }

    fn verify_output(&self, input: &[u8], output: &[u8]) -> Option<Result<(), String>> {
        let job = GenerationJob::decode(input, self.config.vocab).ok()?;
        let claimed = match Generation::decode(output) {
            Ok(g) => g,
            Err(e) => return Some(Err(e.to_string())),
        };
        match self.check(&job, &claimed) {
            Ok(()) => Some(Ok(())),
            // Weights this node cannot load: it cannot tell.
            Err(CheckError::Model(_)) => None,
            Err(e) => Some(Err(e.to_string())),
        }
    }

    fn output_text(&self, output: &[u8]) -> Option<String> {
        let generation = Generation::decode(output).ok()?;
        let text: Vec<u32> = generation.tokens.into_iter().filter(|t| *t != self.eos).collect();
        self.decode(&text).ok()
    }

    fn run_batch(&self, inputs: &[&[u8]]) -> Result<Vec<Vec<u8>>, InferenceError> {
        self.run_batch_until(inputs, &|| false, &|_, _| {})
    }

    fn streams(&self) -> bool {
        true
    }

    fn run_batch_until(
        &self,
        inputs: &[&[u8]],
        stop: &dyn Fn() -> bool,
        partial: &dyn Fn(usize, &[u8]),
    ) -> Result<Vec<Vec<u8>>, InferenceError> {
        let jobs = inputs
            .iter()
            .map(|i| GenerationJob::decode(i, self.config.vocab))
            .collect::<Result<Vec<_>, _>>()?;
        let mut so_far: Vec<Generation> = jobs
            .iter()
            .map(|_| Generation {
                tokens: Vec::new(),
                stop: StopReason::MaxTokens,
            })
            .collect();
        let on_token = |j: usize, token: u32| {
            so_far[j].tokens.push(token);
            partial(j, &so_far[j].encode());
        };
        Ok(self
            .generate(&jobs, on_token, Some(stop))?
            .iter()
            .map(Generation::encode)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chat_template_adds_the_default_system_turn_only_when_missing() {
        assert_eq!(
            chat_prompt(&[("user", "hi")]),
            format!(
                "<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
            )
        );
        assert_eq!(
            chat_prompt(&[("system", "S"), ("user", "U")]),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
        );
    }
}
