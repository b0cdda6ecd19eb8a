//! all-MiniLM-L6-v2 in burn: token ids and cosine from shared/ASSETS.md, and embeddings against the PyTorch
//! reference made by scripts/minilm_reference.py (committed as node/tests/data/minilm-reference.json).
//! Skips with a printed reason when the fetched assets are absent.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use fleetmesh_node::inference::minilm::{DIM, MiniLm};
use fleetmesh_node::inference::{Model, f32s};

fn model_or_skip() -> Option<MiniLm> {
    let dir = std::env::var_os("FLEETMESH_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../assets")));
    let model = MiniLm::from_assets(&dir).unwrap();
    if model.is_none() {
        fleetmesh_node::testkit::skip_unless_ci(&format!(
            "minilm assets not in {} (run scripts/fetch-assets.sh minilm)",
            dir.display()
        ));
    }
    model
}

fn embed(model: &MiniLm, texts: &[&str]) -> Vec<Vec<f32>> {
    let inputs: Vec<&[u8]> = texts.iter().map(|t| t.as_bytes()).collect();
    model
        .run_batch(&inputs)
        .unwrap()
        .iter()
        .map(|o| f32s(o))
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

#[test]
fn token_ids_and_sentence_cosine_match_the_golden_values() {
    let Some(model) = model_or_skip() else { return };
    assert_eq!(
        model.token_ids("A man is eating food.").unwrap(),
        vec![101, 1037, 2158, 2003, 5983, 2833, 1012, 102]
    );
    let e = embed(
        &model,
        &["A man is eating food.", "A man is eating a piece of bread."],
    );
    assert_eq!(e[0].len(), DIM);
    let norm: f32 = e[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "embedding norm {norm}");
    let c = cosine(&e[0], &e[1]);
    println!("cosine = {c:.4} (golden 0.755)");
    assert!((c - 0.755).abs() < 5e-4, "cosine {c}");
}

#[test]
fn embeddings_match_the_pytorch_reference() {
    let Some(model) = model_or_skip() else { return };
    let reference: serde_json::Value =
        serde_json::from_str(include_str!("data/minilm-reference.json")).expect("reference JSON");
    let items = reference["sentences"].as_array().unwrap();
    assert!(items.len() >= 4);
    let mut worst = 0f32;
    for item in items {
        let text = item["text"].as_str().unwrap();
        let want: Vec<f32> = item["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let ids: Vec<u32> = item["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(model.token_ids(text).unwrap(), ids, "token ids of {text:?}");
        let got = &embed(&model, &[text])[0];
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        worst = worst.max(diff);
    }
    println!(
        "max abs difference to PyTorch: {worst:.2e} over {} sentences",
        items.len()
    );
    // The README's bound (2e-7 measured on this machine kind).
    assert!(worst <= 1e-6, "max abs difference {worst}");
}

#[test]
fn minilm_outputs_are_bitwise_deterministic() {
    let Some(model) = model_or_skip() else { return };
    let texts = [
        "A man is eating food.",
        "Parked cars can do useful work.",
        "short",
        "A much longer sentence with many more tokens in it than the others.",
    ];
    let batch = embed(&model, &texts);
    assert_eq!(embed(&model, &texts), batch, "repeated run differs");
    for (i, t) in texts.iter().enumerate() {
        assert_eq!(
            embed(&model, &[t])[0],
            batch[i],
            "{t:?} alone differs from inside the batch"
        );
    }
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        assert_eq!(
            pool.install(|| embed(&model, &texts)),
            batch,
            "{threads} threads give other bits"
        );
    }
    assert!(
        model.check_input(&[0xff, 0xfe]).is_err(),
        "invalid UTF-8 must be refused"
    );
    assert!(model.check_input(b"").is_err());
}

#[test]
fn packed_encoder_equals_burns_within_1e6_and_a_sentence_has_the_same_bits_in_any_batch() {
    let Some(model) = model_or_skip() else { return };
    // Two- and three-token texts too (" " is [CLS] [SEP]): their attention products have K = 2 and 3.
    let texts: Vec<&str> = [" ", "a"]
        .into_iter()
        .chain(
            include_str!("../../scripts/bench-sentences.txt")
                .lines()
                .filter(|l| !l.trim().is_empty())
                .cycle()
                .take(30),
        )
        .collect();
    let refs: Vec<&[u8]> = texts.iter().map(|t| t.as_bytes()).collect();
    assert!(model.run_batch(&[]).unwrap().is_empty());
    let packed = model.run_batch(&refs).unwrap();
    let burn = model.run_batch_burn(&refs).unwrap();
    let worst = packed
        .iter()
        .zip(&burn)
        .flat_map(|(p, b)| f32s(p).into_iter().zip(f32s(b)).map(|(x, y)| (x - y).abs()))
        .fold(0f32, f32::max);
    println!(
        "packed vs burn flex: max abs difference {worst:.2e} over {} sentences",
        refs.len()
    );
    assert!(worst <= 1e-6, "packed encoder differs from burn's by {worst}");
    for size in [1, 2, 5, 17] {
        for start in [0, refs.len() - size] {
            let out = model.run_batch(&refs[start..start + size]).unwrap();
            assert_eq!(
                out,
                packed[start..start + size],
                "a batch of {size} at {start} gives other bits"
            );
        }
    }
}

/// erf in double precision by its Taylor series (|x| <= 4: 100 terms, cancellation leaves ~9 digits).
fn erf_series(x: f64) -> f64 {
    let (mut term, mut sum) = (x, x);
    for n in 1..100 {
        term *= -x * x / n as f64;
        sum += term / (2 * n + 1) as f64;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

#[test]
fn gelu_and_exp_from_basic_operations_are_within_their_stated_error() {
    use fleetmesh_node::inference::bert::{erf, exp, gelu};
    let (mut erf_err, mut exp_err, mut gelu_err) = (0f64, 0f64, 0f64);
    for i in -8000..=8000 {
        let x = i as f32 / 1000.0;
        // erf is 1 to within 1.6e-8 beyond 4, where the series loses its digits.
        let want = if x.abs() <= 4.0 {
            erf_series(f64::from(x))
        } else {
            f64::from(x.signum())
        };
        erf_err = erf_err.max((f64::from(erf(x)) - want).abs());
        if x.abs() <= 5.6 {
            let want = 0.5 * f64::from(x) * (1.0 + erf_series(f64::from(x) / 2f64.sqrt()));
            gelu_err = gelu_err.max((f64::from(gelu(x)) - want).abs());
        }
    }
    for i in -87_000..=0 {
        let x = i as f32 / 1000.0;
        let want = f64::from(x).exp();
        exp_err = exp_err.max((f64::from(exp(x)) - want).abs() / want);
    }
    println!("erf abs error {erf_err:.2e}, gelu abs error {gelu_err:.2e}, exp relative error {exp_err:.2e}");
    // The errors bert.rs states.
    assert!(erf_err <= 5e-7, "erf error {erf_err}");
    assert!(exp_err <= 3e-7, "exp error {exp_err}");
    assert!(gelu_err <= 1e-6, "gelu error {gelu_err}");
}
