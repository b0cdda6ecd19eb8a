//! A reader for GGUF files (llama.cpp's model format, versions 2 and 3): the header, the metadata, the
//! tensor table, and dequantisation of the tensor types a fleet model uses (F32, F16, Q4_0, Q4_1, Q8_0),
//! exactly as llama.cpp defines their blocks.
//!
//! The file may come from a peer, so every count, length, type and offset is checked before it is used,
//! and every failure is a [`GgufError`]: nothing in a malformed file can make the reader panic, allocate
//! more than the file's own size (plus small bounded overheads), or read outside the file.
//!
//! Layout (little-endian): magic `GGUF`, version `u32`, tensor count `u64`, metadata count `u64`; the
//! metadata (key string, value type `u32`, value); the tensor table (name, dimension count `u32`, dimensions
//! `u64` innermost first, type `u32`, offset `u64` from the start of the data); padding to the alignment
//! (`general.alignment`, default 32); the tensor data.

use std::collections::BTreeMap;

/// Most metadata entries.
pub const MAX_METADATA: u64 = 4_096;
/// Most tensors.
pub const MAX_TENSORS: u64 = 65_536;
/// Most elements of one metadata array (a vocabulary of up to a million tokens).
pub const MAX_ARRAY: u64 = 1 << 20;
/// Longest string (a key, a token, a chat template).
pub const MAX_STRING: u64 = 1 << 20;
/// Most dimensions of a tensor.
pub const MAX_DIMS: u32 = 4;

/// Why a GGUF file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GgufError {
    /// The file ended inside a field.
    #[error("truncated at byte {offset}: {what} needs {need} more bytes")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Where it starts.
        offset: usize,
        /// Bytes it needs.
        need: u64,
    },
    /// The file does not start with `GGUF`.
    #[error("not a GGUF file (magic {0:02x?})")]
    BadMagic([u8; 4]),
    /// A version this reader does not know.
    #[error("GGUF version {0} is not supported (2 and 3 are)")]
    Version(u32),
    /// A count or length above this reader's limits.
    #[error("{what} of {got} exceeds the limit of {max}")]
    TooLarge {
        /// What was counted.
        what: &'static str,
        /// The count in the file.
        got: u64,
        /// The limit.
        max: u64,
    },
    /// A string that is not UTF-8.
    #[error("{what} at byte {offset} is not UTF-8")]
    NotUtf8 {
        /// The field.
        what: &'static str,
        /// Where it starts.
        offset: usize,
    },
    /// A metadata value type this reader does not know (or an array of arrays).
    #[error("metadata {key}: unknown value type {ty}")]
    ValueType {
        /// The key.
        key: String,
        /// The type code.
        ty: u32,
    },
    /// A key or tensor name that appears twice.
    #[error("duplicate {what} {name}")]
    Duplicate {
        /// `metadata key` or `tensor`.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A tensor with a type this reader cannot dequantise.
    #[error("tensor {name}: unsupported type {ty}")]
    TensorType {
        /// The tensor.
        name: String,
        /// The type code.
        ty: u32,
    },
    /// A tensor whose dimensions are not usable (no dimension, a zero, an overflowing element count, or a
    /// row length that is not a whole number of blocks).
    #[error("tensor {name}: bad shape {dims:?}")]
    Shape {
        /// The tensor.
        name: String,
        /// Its dimensions, innermost first.
        dims: Vec<u64>,
    },
    /// A tensor whose data lies outside the file, is not aligned, or overlaps another tensor.
    #[error("tensor {name}: data at {offset}..+{len} is outside the data section, misaligned or overlapping")]
    Placement {
        /// The tensor.
        name: String,
        /// Its offset from the start of the data.
        offset: u64,
        /// Its length in bytes.
        len: u64,
    },
    /// The alignment is not a power of two (or zero).
    #[error("alignment {0} is not a power of two")]
    Alignment(u64),
    /// A metadata key the model needs is missing or has another type.
    #[error("metadata {key}: missing or not {expected}")]
    Missing {
        /// The key.
        key: String,
        /// What it should be.
        expected: &'static str,
    },
    /// A tensor the model needs is missing or has another shape.
    #[error("tensor {name}: missing or not of shape {expected:?}")]
    MissingTensor {
        /// The tensor.
        name: String,
        /// The shape expected, innermost first.
        expected: Vec<u64>,
    },
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `u8`, `u16`, `u32` or `u64`.
    Uint(u64),
    /// `i8`, `i16`, `i32` or `i64`.
    Int(i64),
    /// `f32` or `f64`.
    Float(f64),
    /// `bool`.
    Bool(bool),
    /// A UTF-8 string.
    String(String),
    /// An array of scalars or strings (GGUF arrays of arrays are refused).
    Array(Vec<Value>),
}

/// A tensor's element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorType {
    /// 32-bit floats.
    F32,
    /// 16-bit floats.
    F16,
    /// Blocks of 32: an f16 scale and 32 4-bit values (`(q - 8) d`).
    Q4_0,
    /// Blocks of 32: f16 scale and minimum and 32 4-bit values (`q d + m`).
    Q4_1,
    /// Blocks of 32: an f16 scale and 32 signed bytes (`q d`).
    Q8_0,
}

impl TensorType {
    fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            _ => return None,
        })
    }

    /// Elements per block and bytes per block.
    pub fn block(self) -> (u64, u64) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q8_0 => (32, 34),
        }
    }
}

/// One entry of the tensor table, checked against the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions, innermost (contiguous) first, as GGUF stores them.
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: TensorType,
    /// Offset of the data from the start of the file.
    pub start: usize,
    /// Length of the data in bytes.
    pub len: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF file: its metadata and tensor table (the data stays in the caller's bytes).
#[derive(Debug, Clone)]
pub struct Gguf {
    /// The format version.
    pub version: u32,
    /// Metadata by key.
    pub metadata: BTreeMap<String, Value>,
    /// Tensors by name.
    pub tensors: BTreeMap<String, TensorInfo>,
}

/// A cursor over the file's bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, what: &'static str, n: u64) -> Result<&'a [u8], GgufError> {
        let left = (self.bytes.len() - self.at) as u64;
        if n > left {
            return Err(GgufError::Truncated {
                what,
                offset: self.at,
                need: n - left,
            });
        }
        let n = n as usize;
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], GgufError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(what, N as u64)?);
        Ok(out)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn count(&mut self, what: &'static str, max: u64) -> Result<u64, GgufError> {
        let got = self.u64(what)?;
        if got > max {
            return Err(GgufError::TooLarge { what, got, max });
        }
        Ok(got)
    }

    fn string(&mut self, what: &'static str) -> Result<String, GgufError> {
        let len = self.count(what, MAX_STRING)?;
        let offset = self.at;
        let raw = self.take(what, len)?;
        String::from_utf8(raw.to_vec()).map_err(|_| GgufError::NotUtf8 { what, offset })
    }

    /// A value of type `ty`; `nested` refuses arrays (arrays of arrays).
    fn value(&mut self, key: &str, ty: u32, nested: bool) -> Result<Value, GgufError> {
        const W: &str = "metadata value";
        Ok(match ty {
            0 => Value::Uint(u64::from(self.array::<1>(W)?[0])),
            1 => Value::Int(i64::from(self.array::<1>(W)?[0] as i8)),
            2 => Value::Uint(u64::from(u16::from_le_bytes(self.array(W)?))),
            3 => Value::Int(i64::from(i16::from_le_bytes(self.array(W)?))),
            4 => Value::Uint(u64::from(self.u32(W)?)),
            5 => Value::Int(i64::from(i32::from_le_bytes(self.array(W)?))),
            6 => Value::Float(f64::from(f32::from_le_bytes(self.array(W)?))),
            7 => match self.array::<1>(W)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                _ => {
                    return Err(GgufError::ValueType { key: key.into(), ty });
                }
            },
            8 => Value::String(self.string(W)?),
            9 if !nested => {
                let inner = self.u32("array type")?;
                let len = self.count("array length", MAX_ARRAY)?;
                // Every element takes at least one byte, so a length past the end of the file is refused
                // before anything is allocated for it.
                let left = (self.bytes.len() - self.at) as u64;
                if len > left {
                    return Err(GgufError::Truncated {
                        what: "array",
                        offset: self.at,
                        need: len - left,
                    });
                }
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(self.value(key, inner, true)?);
                }
                Value::Array(items)
            }
            10 => Value::Uint(self.u64(W)?),
            11 => Value::Int(i64::from_le_bytes(self.array(W)?)),
            12 => Value::Float(f64::from_le_bytes(self.array(W)?)),
            _ => {
                return Err(GgufError::ValueType { key: key.into(), ty });
            }
        })
    }
}

impl Gguf {
    /// Parses and checks the header, metadata and tensor table of a GGUF file held in `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Self, GgufError> {
        let mut r = Reader { bytes, at: 0 };
        let magic: [u8; 4] = r.array("magic")?;
        if &magic != b"GGUF" {
            return Err(GgufError::BadMagic(magic));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version(version));
        }
        let tensor_count = r.count("tensor count", MAX_TENSORS)?;
        let metadata_count = r.count("metadata count", MAX_METADATA)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..metadata_count {
            let key = r.string("metadata key")?;
            let ty = r.u32("value type")?;
            let value = r.value(&key, ty, false)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(GgufError::Duplicate {
                    what: "metadata key",
                    name: key,
                });
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(Value::Uint(a)) if a.is_power_of_two() => *a,
            Some(Value::Uint(a)) => return Err(GgufError::Alignment(*a)),
            Some(_) => {
                return Err(GgufError::Missing {
                    key: "general.alignment".into(),
                    expected: "an unsigned integer",
                });
            }
        };
        let mut table = Vec::new();
        for _ in 0..tensor_count {
            let name = r.string("tensor name")?;
            let n_dims = r.u32("dimension count")?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::TooLarge {
                    what: "dimension count",
                    got: u64::from(n_dims),
                    max: u64::from(MAX_DIMS),
                });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64("dimension")?);
            }
            let code = r.u32("tensor type")?;
            let ty = TensorType::from_code(code).ok_or_else(|| GgufError::TensorType {
                name: name.clone(),
                ty: code,
            })?;
            let offset = r.u64("tensor offset")?;
            table.push((name, dims, ty, offset));
        }
        let data_start = (r.at as u64).div_ceil(alignment) * alignment;
        let data_len = (bytes.len() as u64).saturating_sub(data_start);
        let mut tensors = BTreeMap::new();
        let mut spans = Vec::with_capacity(table.len());
        for (name, dims, ty, offset) in table {
            let (per_block, block_bytes) = ty.block();
            let elements = dims
                .iter()
                .try_fold(1u64, |n, d| if *d == 0 { None } else { n.checked_mul(*d) })
                .filter(|n| *n < 1 << 40);
            let Some(elements) = elements.filter(|_| dims[0] % per_block == 0) else {
                return Err(GgufError::Shape { name, dims });
            };
            let len = elements / per_block * block_bytes;
            let fits = offset % alignment == 0 && offset.checked_add(len).is_some_and(|end| end <= data_len);
            if !fits {
                return Err(GgufError::Placement { name, offset, len });
            }
            spans.push((offset, len, name.clone()));
            let info = TensorInfo {
                name: name.clone(),
                dims,
                ty,
                start: (data_start + offset) as usize,
                len: len as usize,
            };
            if tensors.insert(name.clone(), info).is_some() {
                return Err(GgufError::Duplicate { what: "tensor", name });
            }
        }
        spans.sort();
        for pair in spans.windows(2) {
            if pair[0].0 + pair[0].1 > pair[1].0 {
                return Err(GgufError::Placement {
                    name: pair[1].2.clone(),
                    offset: pair[1].0,
                    len: pair[1].1,
                });
            }
        }
        Ok(Self {
            version,
            metadata,
            tensors,
        })
    }

    /// An unsigned integer metadata value.
    pub fn uint(&self, key: &str) -> Result<u64, GgufError> {
        match self.metadata.get(key) {
            Some(Value::Uint(v)) => Ok(*v),
            Some(Value::Int(v)) if *v >= 0 => Ok(*v as u64),
            _ => Err(GgufError::Missing {
                key: key.into(),
                expected: "an unsigned integer",
            }),
        }
    }

    /// A float metadata value.
    pub fn float(&self, key: &str) -> Result<f64, GgufError> {
        match self.metadata.get(key) {
            Some(Value::Float(v)) if v.is_finite() => Ok(*v),
            _ => Err(GgufError::Missing {
                key: key.into(),
                expected: "a finite float",
            }),
        }
    }

    /// A string metadata value.
    pub fn string(&self, key: &str) -> Result<&str, GgufError> {
        match self.metadata.get(key) {
            Some(Value::String(v)) => Ok(v),
            _ => Err(GgufError::Missing {
                key: key.into(),
                expected: "a string",
            }),
        }
    }

    /// An array of strings.
    pub fn strings(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        let missing = || GgufError::Missing {
            key: key.into(),
            expected: "an array of strings",
        };
        match self.metadata.get(key) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.as_str()),
                    _ => Err(missing()),
                })
                .collect(),
            _ => Err(missing()),
        }
    }

    /// An array of integers.
    pub fn ints(&self, key: &str) -> Result<Vec<i64>, GgufError> {
        let missing = || GgufError::Missing {
            key: key.into(),
            expected: "an array of integers",
        };
        match self.metadata.get(key) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::Int(i) => Ok(*i),
                    Value::Uint(u) => i64::try_from(*u).map_err(|_| missing()),
                    _ => Err(missing()),
                })
                .collect(),
            _ => Err(missing()),
        }
    }

    /// The tensor `name`, which must have exactly the dimensions `dims` (innermost first).
    pub fn tensor(&self, name: &str, dims: &[u64]) -> Result<&TensorInfo, GgufError> {
        self.tensors
            .get(name)
            .filter(|t| t.dims == dims)
            .ok_or_else(|| GgufError::MissingTensor {
                name: name.into(),
                expected: dims.to_vec(),
            })
    }
}

/// An IEEE half-precision value as f32 (exact: every f16 is an f32).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    let bits = match (exp, mant) {
        (0, 0) => sign,
        // Subnormal: value = mant * 2^-24, exactly representable as a normal f32.
        (0, _) => {
            let magnitude = mant as f32 * f32::from_bits(0x3380_0000);
            return if sign == 0 { magnitude } else { -magnitude };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, _) => sign | 0x7fc0_0000 | (mant << 13),
        _ => sign | ((exp + 112) << 23) | (mant << 13),
    };
    f32::from_bits(bits)
}

/// The elements of a tensor as f32, in file order (innermost dimension contiguous), dequantised as
/// llama.cpp's reference code defines each block: Q4_0 `(q - 8) d`, Q4_1 `q d + m` (low nibbles are
/// elements 0-15 of the block, high nibbles 16-31), Q8_0 `q d`, each product and sum rounded to f32 on its
/// own (no fused multiply-add), as the `gguf` Python package computes it.
///
/// `bytes` must be the file the table was parsed from (the table's ranges were checked against it).
pub fn dequantize(bytes: &[u8], info: &TensorInfo) -> Vec<f32> {
    let data = &bytes[info.start..info.start + info.len];
    let mut out = Vec::with_capacity(info.elements() as usize);
    let half = |b: &[u8]| f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
    match info.ty {
        TensorType::F32 => out.extend(
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        TensorType::F16 => out.extend(data.chunks_exact(2).map(half)),
        TensorType::Q4_0 => {
            for block in data.chunks_exact(18) {
                let d = half(&block[0..2]);
                let qs = &block[2..18];
                out.extend(qs.iter().map(|q| f32::from((q & 0x0f) as i8 - 8) * d));
                out.extend(qs.iter().map(|q| f32::from((q >> 4) as i8 - 8) * d));
            }
        }
        TensorType::Q4_1 => {
            for block in data.chunks_exact(20) {
                let (d, m) = (half(&block[0..2]), half(&block[2..4]));
                let qs = &block[4..20];
                out.extend(qs.iter().map(|q| f32::from(q & 0x0f) * d + m));
                out.extend(qs.iter().map(|q| f32::from(q >> 4) * d + m));
            }
        }
        TensorType::Q8_0 => {
            for block in data.chunks_exact(34) {
                let d = half(&block[0..2]);
                out.extend(block[2..34].iter().map(|q| f32::from(*q as i8) * d));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
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
}
