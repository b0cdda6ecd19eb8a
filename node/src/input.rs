//! Reading job inputs from files: CSV rows or PNG images for the image models.

use std::path::Path;

use crate::inference::InferenceError;

/// Why an input file could not be turned into model inputs.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The file could not be read (the cause follows in the error's chain).
    #[error("cannot read {path}")]
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

/// Reads image inputs of `pixels` bytes each: a PNG (one `side` x `side` image) or CSV (one image per
/// line: `pixels` integers 0..=`max`, optionally followed by a label, which is returned).
///
/// A PNG is read as a user means it, as MNIST-style ink intensity scaled to 0..=`max` (the digit bright,
/// its background dark):
/// - any colour type and bit depth: palettes are expanded to their colours (not read as indices), 1-, 2-
///   and 4-bit grey is expanded and 16-bit reduced to 8 bits; colour is turned into luma;
/// - transparency: when at least a quarter of the pixels are not fully opaque (a digit drawn on a
///   transparent canvas), the opaque strokes are the digit (ink = opacity, whatever their colour); an
///   otherwise opaque image is read by its colours;
/// - polarity: an opaque image whose border is mostly light is a dark digit on a light background, and
///   is inverted;
/// - both checksums (each chunk's CRC and the image data's zlib Adler-32) are verified: a damaged file is
///   refused, never read as some other image.
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
        return Ok(vec![(read_png(&bytes, side, max).map_err(invalid)?, None)]);
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

/// Largest decoded PNG this reader allocates for (a 28x28 RGBA image at 16 bits is 6 KiB).
const MAX_PNG_BYTES: usize = 1024 * 1024;

/// One `side` x `side` PNG as ink intensities 0..=`max` (see [`read_images`]); `Err` says what is wrong.
fn read_png(bytes: &[u8], side: u32, max: u8) -> Result<Vec<u8>, String> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_limits(png::Limits { bytes: MAX_PNG_BYTES });
    decoder.ignore_checksums(false);
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder
        .read_info()
        .map_err(|e| format!("not a readable PNG: {e}"))?;
    let (width, height, color, depth) = {
        let info = reader.info();
        (info.width, info.height, info.color_type, info.bit_depth)
    };
    if (width, height) != (side, side) {
        return Err(format!(
            "expected a {side}x{side} image, got {width}x{height} ({}-bit {color:?})",
            depth as u8
        ));
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| "PNG too large".to_string())?;
    let mut buf = vec![0u8; size];
    let frame = reader
        .next_frame(&mut buf)
        .map_err(|e| format!("damaged PNG image data: {e}"))?;
    // Reading to the end checks the chunks after the image data too.
    reader
        .finish()
        .map_err(|e| format!("damaged PNG after the image data: {e}"))?;
    let (out_color, out_depth) = reader.output_color_type();
    if out_depth != png::BitDepth::Eight {
        return Err(format!("cannot read a {}-bit {color:?} PNG", depth as u8));
    }
    let samples = out_color.samples();
    let has_alpha = matches!(out_color, png::ColorType::GrayscaleAlpha | png::ColorType::Rgba);
    let pixels: Vec<(u32, u32)> = buf[..frame.buffer_size()]
        .chunks_exact(samples)
        .map(|px| {
            let luma = if samples >= 3 {
                (u32::from(px[0]) * 299 + u32::from(px[1]) * 587 + u32::from(px[2]) * 114) / 1000
            } else {
                u32::from(px[0])
            };
            let alpha = if has_alpha {
                u32::from(px[samples - 1])
            } else {
                255
            };
            (luma, alpha)
        })
        .collect();
    // A transparent canvas: at least a quarter of the image not fully opaque (one soft corner of an
    // otherwise opaque image does not count).
    let transparent = pixels.iter().filter(|(_, a)| *a < 255).count();
    let ink: Vec<u32> = if transparent * 4 >= pixels.len() {
        pixels.iter().map(|(_, a)| *a).collect()
    } else {
        let n = side as usize;
        let border: Vec<u32> = (0..n * n)
            .filter(|i| i / n == 0 || i / n == n - 1 || i % n == 0 || i % n == n - 1)
            .map(|i| pixels[i].0)
            .collect();
        let light_background = border.iter().sum::<u32>() > 127 * border.len() as u32;
        pixels
            .iter()
            .map(|(l, _)| if light_background { 255 - l } else { *l })
            .collect()
    };
    Ok(ink
        .into_iter()
        .map(|v| ((v * u32::from(max) + 127) / 255) as u8)
        .collect())
}
