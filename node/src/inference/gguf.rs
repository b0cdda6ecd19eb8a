//! A reader for GGUF files (llama.cpp's model format, versions 2 and 3): the header, the metadata, the
//! tensor table, and dequantisation of the tensor types a fleet model uses (F32, F16, Q4_0, Q4_1, Q8_0),
//! exactly as llama.cpp defines their blocks.
//!
//! The file may come from a peer, so every count, length, type and offset is checked before it is used,
//! and every failure is a [`GgufError`]: nothing in a malformed file can make the reader panic or read
//! outside the file, and what it allocates is bounded: strings by the file's size, array elements by
//! [`MAX_ARRAY_TOTAL`] in all (64 MiB of values), the tensor table by [`MAX_TENSORS`].
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
/// Most array elements in all of a file's metadata (each is held as a 32-byte [`Value`], whatever its size
/// in the file: this bounds that memory at 64 MiB).
pub const MAX_ARRAY_TOTAL: u64 = 1 << 21;
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
    /// Array elements still allowed ([`MAX_ARRAY_TOTAL`] at the start).
    elements_left: u64,
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
                if len > self.elements_left {
                    return Err(GgufError::TooLarge {
                        what: "array elements in all",
                        got: MAX_ARRAY_TOTAL - self.elements_left + len,
                        max: MAX_ARRAY_TOTAL,
                    });
                }
                self.elements_left -= len;
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
        let mut r = Reader {
            bytes,
            at: 0,
            elements_left: MAX_ARRAY_TOTAL,
        };
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
#[path = "gguf_tests.rs"]
mod tests;
