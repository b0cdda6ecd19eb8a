//! The job of a text-generation model, as bytes: a [`GenerationJob`] (prompt token ids, most new tokens,
//! stop rule, sampling) in, a [`Generation`] (token ids, why it stopped) out, each with a fixed
//! little-endian layout and a decoder that refuses every malformed, oversize or out-of-vocabulary input; and
//! how the next token is picked (greedy, or seeded sampling that every car draws alike).

use super::InferenceError;
use super::smollm2::NAME;

/// Most prompt tokens of one job.
pub const MAX_PROMPT: usize = 2_048;
/// Most new tokens of one job.
pub const MAX_NEW: usize = 512;
/// Most candidates of seeded sampling.
pub const MAX_TOP_K: u16 = 1_000;
/// Bytes of an input's fixed header.
pub(crate) const JOB_HEADER: usize = 20;

/// When generation stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRule {
    /// After exactly `max_new` tokens.
    MaxTokens,
    /// At the end-of-turn token (included in the output), or after `max_new` tokens.
    Eos,
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `max_new` tokens were generated.
    MaxTokens,
    /// The end-of-turn token was generated (it is the output's last token).
    Eos,
}

/// How the next token is picked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The token with the highest logit (the lowest id on a tie).
    Greedy,
    /// Among the `top_k` highest logits, drawn with probabilities `exp(logit / temperature)` by a
    /// generator seeded with `seed` (splitmix64 of the seed and the step): the same draw on every car.
    Seeded {
        /// Softmax temperature, in `(0, 10]`.
        temperature: f32,
        /// Candidates, `1..=`[`MAX_TOP_K`].
        top_k: u16,
        /// Seed of the draws.
        seed: u64,
    },
}

/// One generation job: the input bytes of a `smollm2` job.
///
/// Layout: version `1` (u8), stop rule (u8: 0 max tokens, 1 end of turn), most new tokens (u16), temperature
/// (f32, 0 for greedy), top-k (u16), seed (u64), prompt length (u16), then the prompt's token ids (u32 each).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationJob {
    /// The prompt's token ids (chat template already applied), `1..=`[`MAX_PROMPT`].
    pub prompt: Vec<u32>,
    /// Most new tokens, `1..=`[`MAX_NEW`].
    pub max_new: u16,
    /// When to stop.
    pub stop: StopRule,
    /// How to pick tokens.
    pub sampling: Sampling,
}

/// A generation: the output bytes of a `smollm2` job.
///
/// Layout: stop reason (u8: 0 max tokens, 1 end of turn), token count (u16), the token ids (u32 each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// The new tokens.
    pub tokens: Vec<u32>,
    /// Why generation stopped.
    pub stop: StopReason,
}

pub(crate) fn malformed(index: usize, what: &str) -> InferenceError {
    InferenceError::OutOfRange {
        model: NAME.into(),
        index,
        value: what.into(),
    }
}

impl GenerationJob {
    /// A greedy job that stops at the end of the turn.
    pub fn greedy(prompt: Vec<u32>, max_new: u16) -> Self {
        Self {
            prompt,
            max_new,
            stop: StopRule::Eos,
            sampling: Sampling::Greedy,
        }
    }

    /// The job's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(JOB_HEADER + 4 * self.prompt.len());
        out.push(1);
        out.push(match self.stop {
            StopRule::MaxTokens => 0,
            StopRule::Eos => 1,
        });
        out.extend(self.max_new.to_le_bytes());
        let (t, k, s) = match self.sampling {
            Sampling::Greedy => (0.0f32, 0u16, 0u64),
            Sampling::Seeded {
                temperature,
                top_k,
                seed,
            } => (temperature, top_k, seed),
        };
        out.extend(t.to_le_bytes());
        out.extend(k.to_le_bytes());
        out.extend(s.to_le_bytes());
        out.extend((self.prompt.len() as u16).to_le_bytes());
        for id in &self.prompt {
            out.extend(id.to_le_bytes());
        }
        out
    }

    /// Reads and checks a job's bytes against a vocabulary of `vocab` tokens.
    pub fn decode(bytes: &[u8], vocab: usize) -> Result<Self, InferenceError> {
        let max = JOB_HEADER + 4 * MAX_PROMPT;
        if bytes.len() < JOB_HEADER + 4 || bytes.len() > max {
            return Err(InferenceError::WrongInputLength {
                model: NAME.into(),
                expected: max,
                got: bytes.len(),
            });
        }
        let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
        if bytes[0] != 1 {
            return Err(malformed(0, "unknown job version"));
        }
        let stop = match bytes[1] {
            0 => StopRule::MaxTokens,
            1 => StopRule::Eos,
            _ => return Err(malformed(1, "unknown stop rule")),
        };
        let max_new = u16_at(2);
        if max_new == 0 || usize::from(max_new) > MAX_NEW {
            return Err(malformed(2, "most new tokens must be 1..=512"));
        }
        let temperature = f32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        let top_k = u16_at(8);
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&bytes[10..18]);
        let seed = u64::from_le_bytes(seed);
        let sampling = if temperature.to_bits() == 0 {
            if top_k != 0 || seed != 0 {
                return Err(malformed(8, "a greedy job has no top-k or seed"));
            }
            Sampling::Greedy
        } else if temperature > 0.0 && temperature <= 10.0 && (1..=MAX_TOP_K).contains(&top_k) {
            Sampling::Seeded {
                temperature,
                top_k,
                seed,
            }
        } else {
            return Err(malformed(
                4,
                "temperature must be 0 or in (0, 10], top-k in 1..=1000",
            ));
        };
        let n = usize::from(u16_at(JOB_HEADER - 2));
        if n == 0 || bytes.len() != JOB_HEADER + 4 * n {
            return Err(InferenceError::WrongInputLength {
                model: NAME.into(),
                expected: JOB_HEADER + 4 * n.max(1),
                got: bytes.len(),
            });
        }
        let prompt: Vec<u32> = bytes[JOB_HEADER..]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(i) = prompt.iter().position(|t| *t as usize >= vocab) {
            return Err(malformed(JOB_HEADER + 4 * i, "token id outside the vocabulary"));
        }
        Ok(Self {
            prompt,
            max_new,
            stop,
            sampling,
        })
    }
}

impl Generation {
    /// The generation's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(3 + 4 * self.tokens.len());
        out.push(match self.stop {
            StopReason::MaxTokens => 0,
            StopReason::Eos => 1,
        });
        out.extend((self.tokens.len() as u16).to_le_bytes());
        for t in &self.tokens {
            out.extend(t.to_le_bytes());
        }
        out
    }

    /// Reads a generation's bytes (a worker's claimed output): at most [`MAX_NEW`] tokens.
    pub fn decode(bytes: &[u8]) -> Result<Self, InferenceError> {
        let bad = || InferenceError::WrongInputLength {
            model: NAME.into(),
            expected: 3 + 4 * MAX_NEW,
            got: bytes.len(),
        };
        if bytes.len() < 3 {
            return Err(bad());
        }
        let stop = match bytes[0] {
            0 => StopReason::MaxTokens,
            1 => StopReason::Eos,
            _ => return Err(malformed(0, "unknown stop reason")),
        };
        let n = usize::from(u16::from_le_bytes([bytes[1], bytes[2]]));
        if n > MAX_NEW || bytes.len() != 3 + 4 * n {
            return Err(bad());
        }
        let tokens = bytes[3..]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Self { tokens, stop })
    }
}

/// Why a claimed generation failed the teacher-forced check.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CheckError {
    /// The claim does not fit the job (length, stop reason, or a token after the end of turn).
    #[error("the generation does not fit the job: {0}")]
    Shape(String),
    /// The model could not be loaded to check.
    #[error("the model cannot run: {0}")]
    Model(String),
    /// A token the model would not have picked.
    #[error("token {token} at position {position} scores {gap} below the best ({best})")]
    Token {
        /// Position among the new tokens.
        position: usize,
        /// The claimed token.
        token: u32,
        /// The token the model scores highest there.
        best: u32,
        /// How far the claimed token's logit is below the best one.
        gap: f32,
    },
}

/// splitmix64: the sampling generator's output for a seed and step.
fn splitmix(seed: u64, step: u64) -> u64 {
    let mut z = seed.wrapping_add(step.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Token ids ordered by logit, highest first, lowest id first among equals; the first `k`.
pub(crate) fn top_k(logits: &[f32], k: usize) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    let order = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
    let k = k.min(ids.len());
    if k < ids.len() {
        ids.select_nth_unstable_by(k, order);
        ids.truncate(k);
    }
    ids.sort_unstable_by(order);
    ids
}

/// The next token of a job at step `step`.
pub(crate) fn pick(logits: &[f32], sampling: Sampling, step: usize) -> u32 {
    match sampling {
        Sampling::Greedy => top_k(logits, 1)[0],
        Sampling::Seeded {
            temperature,
            top_k: k,
            seed,
        } => {
            let candidates = top_k(logits, usize::from(k));
            let best = logits[candidates[0] as usize];
            let weights: Vec<f32> = candidates
                .iter()
                .map(|t| super::bert::exp((logits[*t as usize] - best) / temperature))
                .collect();
            let total = weights.iter().fold(0.0f32, |s, w| s + w);
            let u = (splitmix(seed, step as u64) >> 40) as f32 / (1u64 << 24) as f32 * total;
            let mut acc = 0.0f32;
            for (t, w) in candidates.iter().zip(&weights) {
                acc += w;
                if u < acc {
                    return *t;
                }
            }
            *candidates.last().unwrap_or(&0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_and_generations_round_trip_and_malformed_bytes_are_refused() {
        let job = GenerationJob {
            prompt: vec![1, 2, 49_151],
            max_new: 7,
            stop: StopRule::MaxTokens,
            sampling: Sampling::Seeded {
                temperature: 0.7,
                top_k: 40,
                seed: u64::MAX,
            },
        };
        let bytes = job.encode();
        assert_eq!(GenerationJob::decode(&bytes, 49_152).unwrap(), job);
        assert!(
            GenerationJob::decode(&bytes, 49_151).is_err(),
            "a token outside the vocabulary"
        );
        for len in 0..bytes.len() {
            assert!(GenerationJob::decode(&bytes[..len], 49_152).is_err());
        }
        let patched = |at: usize, v: &[u8]| {
            let mut b = bytes.clone();
            b[at..at + v.len()].copy_from_slice(v);
            GenerationJob::decode(&b, 49_152)
        };
        assert!(patched(0, &[2]).is_err(), "version");
        assert!(patched(1, &[2]).is_err(), "stop rule");
        assert!(patched(2, &0u16.to_le_bytes()).is_err(), "no new tokens");
        assert!(patched(2, &513u16.to_le_bytes()).is_err(), "too many new tokens");
        assert!(patched(4, &f32::NAN.to_le_bytes()).is_err(), "NaN temperature");
        assert!(
            patched(4, &(-1.0f32).to_le_bytes()).is_err(),
            "negative temperature"
        );
        assert!(patched(8, &0u16.to_le_bytes()).is_err(), "top-k 0");
        assert!(
            patched(18, &4u16.to_le_bytes()).is_err(),
            "prompt length beyond the bytes"
        );
        let mut long = bytes.clone();
        long.extend([0; 4]);
        assert!(
            GenerationJob::decode(&long, 49_152).is_err(),
            "bytes beyond the prompt"
        );
        let greedy = GenerationJob::greedy(vec![5], 1);
        assert_eq!(GenerationJob::decode(&greedy.encode(), 10).unwrap(), greedy);
        let mut seeded_greedy = greedy.encode();
        seeded_greedy[10] = 1;
        assert!(
            GenerationJob::decode(&seeded_greedy, 10).is_err(),
            "a greedy job with a seed"
        );

        let generation = Generation {
            tokens: vec![3, 2],
            stop: StopReason::Eos,
        };
        let bytes = generation.encode();
        assert_eq!(Generation::decode(&bytes).unwrap(), generation);
        for len in 0..bytes.len() {
            assert!(Generation::decode(&bytes[..len]).is_err());
        }
        assert!(Generation::decode(&[2, 0, 0]).is_err(), "stop reason");
        let mut huge = vec![0, 0x01, 0x02];
        huge.extend(vec![0; 4 * 513]);
        assert!(Generation::decode(&huge).is_err(), "more than 512 tokens");
    }

    #[test]
    fn top_k_orders_by_logit_then_id_and_seeded_draws_repeat() {
        let logits = [0.5, 2.0, 2.0, -1.0, 1.0];
        assert_eq!(top_k(&logits, 3), [1, 2, 4]);
        assert_eq!(pick(&logits, Sampling::Greedy, 0), 1);
        let s = Sampling::Seeded {
            temperature: 1.0,
            top_k: 5,
            seed: 42,
        };
        let draws: Vec<u32> = (0..200).map(|i| pick(&logits, s, i)).collect();
        assert_eq!(draws, (0..200).map(|i| pick(&logits, s, i)).collect::<Vec<_>>());
        assert!(draws.contains(&1) && draws.contains(&2) && draws.contains(&4));
    }
}
