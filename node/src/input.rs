//! Reading job inputs from files: CSV rows or PNG images for the image models.

use std::path::Path;

use crate::inference::InferenceError;

/// Why an input file could not be turned into model inputs.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The system error.
        source: std::io::Error,
    },
    /// The file's content is not valid for the model.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The model rejected an input.
    #[error("{path} row {row}: {source}")]
    Model {
        /// The file.
        path: String,
        /// Row (1-based).
        row: usize,
        /// The model's objection.
        source: InferenceError,
    },
}

/// One image input: its pixels and, when the CSV row had one, its label.
pub type ImageRow = (Vec<u8>, Option<u8>);

/// Reads image inputs of `pixels` bytes each: a PNG (one image, grayscale, `side` x `side`, scaled to
/// 0..=`max`) or CSV (one image per line: `pixels` integers, optionally followed by a label, which is
/// returned).
pub fn read_images(path: &Path, pixels: usize, side: u32, max: u8) -> Result<Vec<ImageRow>, InputError> {
    let name = path.display().to_string();
    let invalid = |reason: String| InputError::Invalid {
        path: name.clone(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|source| InputError::Read {
        path: name.clone(),
        source,
    })?;
    if bytes.starts_with(b"\x89PNG") {
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes.as_slice()));
        let mut reader = decoder
            .read_info()
            .map_err(|e| invalid(format!("not a readable PNG: {e}")))?;
        let size = reader
            .output_buffer_size()
            .ok_or_else(|| invalid("PNG too large".into()))?;
        let mut buf = vec![0u8; size];
        let info = reader
            .next_frame(&mut buf)
            .map_err(|e| invalid(format!("PNG: {e}")))?;
        if info.width != side || info.height != side || info.bit_depth != png::BitDepth::Eight {
            return Err(invalid(format!(
                "expected an 8-bit {side}x{side} image, got {}x{}",
                info.width, info.height
            )));
        }
        let channels = info.color_type.samples();
        let gray: Vec<u8> = buf[..info.buffer_size()]
            .chunks(channels)
            .map(|px| {
                let luma = if channels >= 3 {
                    (u32::from(px[0]) * 299 + u32::from(px[1]) * 587 + u32::from(px[2]) * 114) / 1000
                } else {
                    u32::from(px[0])
                };
                ((luma * u32::from(max) + 127) / 255) as u8
            })
            .collect();
        return Ok(vec![(gray, None)]);
    }
    let text = String::from_utf8(bytes).map_err(|_| invalid("neither a PNG nor UTF-8 CSV".into()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let values: Vec<u32> = line
            .split(',')
            .map(|v| v.trim().parse::<f64>().map(|f| f as u32))
            .collect::<Result<_, _>>()
            .map_err(|e| invalid(format!("line {}: {e}", i + 1)))?;
        let (image, label) = match values.len() {
            n if n == pixels => (&values[..], None),
            n if n == pixels + 1 => (&values[..pixels], Some(values[pixels])),
            n => {
                return Err(invalid(format!(
                    "line {}: {n} values, expected {pixels} (or {} with a label)",
                    i + 1,
                    pixels + 1
                )));
            }
        };
        if let Some(p) = image.iter().position(|v| *v > u32::from(max)) {
            return Err(invalid(format!(
                "line {}: value {} at position {p} exceeds {max}",
                i + 1,
                image[p]
            )));
        }
        out.push((
            image.iter().map(|v| *v as u8).collect(),
            label.and_then(|l| u8::try_from(l).ok()),
        ));
    }
    if out.is_empty() {
        return Err(invalid("no input rows".into()));
    }
    Ok(out)
}
