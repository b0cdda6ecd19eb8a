//! Tests of the GGUF reader: a small valid file, every truncation, field patches, budgets and random
//! corruption.

use super::*;

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// A small valid file: two metadata entries and three tensors (F32 `[4]`, Q4_1 `[32, 2]`, Q8_0 `[32]`).
fn sample() -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend(3u64.to_le_bytes());
    out.extend(2u64.to_le_bytes());
    string(&mut out, "general.architecture");
    out.extend(8u32.to_le_bytes());
    string(&mut out, "llama");
    string(&mut out, "tokenizer.ggml.tokens");
    out.extend(9u32.to_le_bytes());
    out.extend(8u32.to_le_bytes());
    out.extend(2u64.to_le_bytes());
    string(&mut out, "a");
    string(&mut out, "b");
    let tensors: [(&str, &[u64], u32, u64); 3] =
        [("f", &[4], 0, 0), ("q41", &[32, 2], 3, 32), ("q80", &[32], 8, 96)];
    for (name, dims, ty, offset) in tensors {
        string(&mut out, name);
        out.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            out.extend(d.to_le_bytes());
        }
        out.extend(ty.to_le_bytes());
        out.extend(offset.to_le_bytes());
    }
    while !out.len().is_multiple_of(32) {
        out.push(0);
    }
    let data = out.len();
    out.resize(data + 96 + 34, 0);
    for (i, v) in [1.0f32, -2.0, 0.5, 3.25].iter().enumerate() {
        out[data + 4 * i..data + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }
    // Q4_1 blocks: d = 0.5, m = -1.0, nibbles 0..15 low and 15..0 high.
    for b in 0..2 {
        let at = data + 32 + 20 * b;
        out[at..at + 2].copy_from_slice(&0x3800u16.to_le_bytes());
        out[at + 2..at + 4].copy_from_slice(&0xbc00u16.to_le_bytes());
        for j in 0..16 {
            out[at + 4 + j] = (j as u8) | ((15 - j as u8) << 4);
        }
    }
    // Q8_0 block: d = 2.0, values -16..16.
    let at = data + 96;
    out[at..at + 2].copy_from_slice(&0x4000u16.to_le_bytes());
    for j in 0..32 {
        out[at + 2 + j] = (j as i8 - 16) as u8;
    }
    out
}

#[test]
fn a_valid_file_parses_and_dequantises_as_llama_cpp_defines_the_blocks() {
    let bytes = sample();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.string("general.architecture").unwrap(), "llama");
    assert_eq!(g.strings("tokenizer.ggml.tokens").unwrap(), ["a", "b"]);
    assert_eq!(
        dequantize(&bytes, g.tensor("f", &[4]).unwrap()),
        [1.0, -2.0, 0.5, 3.25]
    );
    let q41 = dequantize(&bytes, g.tensor("q41", &[32, 2]).unwrap());
    assert_eq!(q41.len(), 64);
    assert_eq!(&q41[..3], &[-1.0, -0.5, 0.0]);
    assert_eq!(q41[16], 15.0 * 0.5 - 1.0);
    assert_eq!(q41[31], -1.0);
    let q80 = dequantize(&bytes, g.tensor("q80", &[32]).unwrap());
    assert_eq!((q80[0], q80[16], q80[31]), (-32.0, 0.0, 30.0));
    assert!(matches!(
        g.tensor("f", &[2, 2]),
        Err(GgufError::MissingTensor { .. })
    ));
}

#[test]
fn every_truncation_and_malformed_field_is_a_typed_error() {
    let bytes = sample();
    for len in 0..bytes.len() - 34 {
        assert!(
            Gguf::parse(&bytes[..len]).is_err(),
            "a file cut at {len} bytes parsed"
        );
    }
    let with = |at: usize, patch: &[u8]| {
        let mut b = bytes.clone();
        b[at..at + patch.len()].copy_from_slice(patch);
        Gguf::parse(&b).unwrap_err()
    };
    assert!(matches!(with(0, b"GGUG"), GgufError::BadMagic(_)));
    assert!(matches!(with(4, &7u32.to_le_bytes()), GgufError::Version(7)));
    assert!(matches!(
        with(8, &u64::MAX.to_le_bytes()),
        GgufError::TooLarge { .. }
    ));
    assert!(matches!(
        with(16, &(1u64 << 40).to_le_bytes()),
        GgufError::TooLarge { .. }
    ));
    // The key string's length, then its value type.
    assert!(matches!(
        with(24, &(1u64 << 50).to_le_bytes()),
        GgufError::TooLarge { .. }
    ));
    assert!(matches!(
        with(52, &13u32.to_le_bytes()),
        GgufError::ValueType { ty: 13, .. }
    ));
    // The array's element type: arrays of arrays are refused.
    let array_type = 24 + 8 + 20 + 4 + 8 + 5 + 8 + 21 + 4;
    assert!(matches!(
        with(array_type, &9u32.to_le_bytes()),
        GgufError::ValueType { ty: 9, .. }
    ));
    assert!(matches!(
        with(array_type + 4, &(1u64 << 19).to_le_bytes()),
        GgufError::Truncated { .. }
    ));
    // The tensor table: first tensor's dims, type and offset.
    let table = array_type + 4 + 8 + 9 + 9;
    let (dims, ty, offset) = (
        table + 8 + 1 + 4,
        table + 8 + 1 + 4 + 8,
        table + 8 + 1 + 4 + 8 + 4,
    );
    assert!(matches!(with(dims, &0u64.to_le_bytes()), GgufError::Shape { .. }));
    assert!(matches!(
        with(dims, &u64::MAX.to_le_bytes()),
        GgufError::Shape { .. }
    ));
    assert!(matches!(
        with(ty, &99u32.to_le_bytes()),
        GgufError::TensorType { ty: 99, .. }
    ));
    assert!(matches!(
        with(offset, &8u64.to_le_bytes()),
        GgufError::Placement { .. }
    ));
    assert!(matches!(
        with(offset, &32u64.to_le_bytes()),
        GgufError::Placement { .. }
    ));
    assert!(matches!(
        with(offset, &(1u64 << 40).to_le_bytes()),
        GgufError::Placement { .. }
    ));
    let third = bytes.windows(3).position(|w| w == b"q80").unwrap();
    assert!(matches!(with(third, b"q41"), GgufError::Duplicate { .. }));
    assert!(matches!(with(table + 8, &[0xff]), GgufError::NotUtf8 { .. }));
}

#[test]
fn arrays_of_small_values_cannot_make_the_reader_allocate_beyond_its_budget() {
    // Three arrays of 2^20 one-byte values (3 MiB of file; 96 MiB as values): the third is refused.
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend(0u64.to_le_bytes());
    out.extend(3u64.to_le_bytes());
    for key in ["a", "b", "c"] {
        string(&mut out, key);
        out.extend(9u32.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend((MAX_ARRAY).to_le_bytes());
        out.extend(std::iter::repeat_n(7u8, MAX_ARRAY as usize));
    }
    match Gguf::parse(&out) {
        Err(GgufError::TooLarge { what, max, .. }) => {
            assert_eq!((what, max), ("array elements in all", MAX_ARRAY_TOTAL));
        }
        other => panic!("{other:?}"),
    }
    // Two of them fit.
    let two = out.len() - (8 + 1 + 4 + 4 + 8 + MAX_ARRAY as usize);
    let mut fits = out[..two].to_vec();
    fits[16..24].copy_from_slice(&2u64.to_le_bytes());
    assert_eq!(Gguf::parse(&fits).unwrap().metadata.len(), 2);
}

#[test]
fn random_corruption_never_panics() {
    let bytes = sample();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut refused = 0;
    for _ in 0..20_000 {
        let mut b = bytes.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % b.len() as u64) as usize;
            b[at] = next() as u8;
        }
        b.truncate(b.len() - (next() % 8) as usize);
        match Gguf::parse(&b) {
            Ok(g) => {
                for t in g.tensors.values() {
                    assert_eq!(dequantize(&b, t).len() as u64, t.elements());
                }
            }
            Err(_) => refused += 1,
        }
    }
    assert!(refused > 1_000, "only {refused} corrupted files refused");
}

#[test]
fn halves_convert_exactly() {
    assert_eq!(f16_to_f32(0x3c00), 1.0);
    assert_eq!(f16_to_f32(0xc000), -2.0);
    assert_eq!(f16_to_f32(0x7bff), 65504.0);
    assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
    assert_eq!(f16_to_f32(0x8001), -(2f32.powi(-24)));
    assert_eq!(f16_to_f32(0x0400), 2f32.powi(-14));
    assert!(f16_to_f32(0x7c00).is_infinite());
    assert!(f16_to_f32(0x7e00).is_nan());
    assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
}
