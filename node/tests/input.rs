//! Image inputs read as a user means them: PNGs from common tools (palettes, transparency, 16-bit grey,
//! a light background), damaged files refused, and a missing file reported once, through the real binary.
#![allow(missing_docs, clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use fleetmesh_node::inference::{Model, argmax, digits, f32s};
use fleetmesh_node::input::{InputError, read_images};

const SIDE: u32 = 8;

/// A held-out digit the embedded model classifies correctly: its pixels (0..=16) and label.
fn digit() -> (Vec<u8>, u8) {
    let model = digits::Digits::embedded().unwrap();
    digits::held_out()
        .unwrap()
        .into_iter()
        .find(|s| s.label == 7 && class_of(&model, &s.pixels) == 7)
        .map(|s| (s.pixels, s.label))
        .unwrap()
}

fn class_of(model: &digits::Digits, pixels: &[u8]) -> usize {
    argmax(&f32s(&model.run_batch(&[pixels]).unwrap()[0]))
}

/// 0..=16 to 0..=255 (and back, exactly, through the reader's scaling).
fn to_8bit(v: u8) -> u8 {
    ((u32::from(v) * 255 + 8) / 16) as u8
}

fn encode(color: png::ColorType, depth: png::BitDepth, palette: Option<Vec<u8>>, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, SIDE, SIDE);
        encoder.set_color(color);
        encoder.set_depth(depth);
        if let Some(p) = palette {
            encoder.set_palette(p);
        }
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(data).unwrap();
    }
    out
}

fn read(bytes: &[u8]) -> Result<Vec<u8>, InputError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("digit.png");
    std::fs::write(&path, bytes).unwrap();
    read_images(&path, digits::PIXELS, SIDE, digits::MAX_PIXEL).map(|rows| rows[0].0.clone())
}

#[test]
fn an_8_bit_grey_png_reads_as_its_pixels() {
    let (pixels, _) = digit();
    let grey: Vec<u8> = pixels.iter().map(|v| to_8bit(*v)).collect();
    let png = encode(png::ColorType::Grayscale, png::BitDepth::Eight, None, &grey);
    assert_eq!(read(&png).unwrap(), pixels);
}

#[test]
fn a_palette_png_is_read_by_colour_not_by_index() {
    let (pixels, label) = digit();
    // Palette entries in reverse order of brightness: read by index, the digit would be a negative.
    let levels: Vec<u8> = (0..=16u8).rev().collect();
    let palette: Vec<u8> = levels.iter().flat_map(|v| [to_8bit(*v); 3]).collect();
    let indices: Vec<u8> = pixels
        .iter()
        .map(|v| levels.iter().position(|l| l == v).unwrap() as u8)
        .collect();
    let png = encode(
        png::ColorType::Indexed,
        png::BitDepth::Eight,
        Some(palette),
        &indices,
    );
    let read = read(&png).unwrap();
    assert_eq!(read, pixels);
    let model = digits::Digits::embedded().unwrap();
    assert_eq!(class_of(&model, &read), usize::from(label));
}

#[test]
fn on_a_transparent_canvas_the_opaque_strokes_are_the_digit() {
    let (pixels, label) = digit();
    // Black strokes, their opacity the ink: composited over black this would be a blank image.
    let rgba: Vec<u8> = pixels.iter().flat_map(|v| [0, 0, 0, to_8bit(*v)]).collect();
    let png = encode(png::ColorType::Rgba, png::BitDepth::Eight, None, &rgba);
    let read = read(&png).unwrap();
    assert_eq!(read, pixels);
    let model = digits::Digits::embedded().unwrap();
    assert_eq!(class_of(&model, &read), usize::from(label));
}

#[test]
fn one_soft_corner_does_not_make_an_opaque_image_transparent() {
    let (pixels, _) = digit();
    // An opaque grey digit whose corner pixel is half transparent: still read by its colours.
    let mut rgba: Vec<u8> = pixels
        .iter()
        .flat_map(|v| {
            let g = to_8bit(*v);
            [g, g, g, 255]
        })
        .collect();
    rgba[3] = 128;
    let png = encode(png::ColorType::Rgba, png::BitDepth::Eight, None, &rgba);
    assert_eq!(read(&png).unwrap(), pixels);
}

#[test]
fn a_16_bit_grey_png_is_reduced_to_8_bits() {
    let (pixels, _) = digit();
    let wide: Vec<u8> = pixels
        .iter()
        .flat_map(|v| (u16::from(to_8bit(*v)) * 257).to_be_bytes())
        .collect();
    let png = encode(png::ColorType::Grayscale, png::BitDepth::Sixteen, None, &wide);
    assert_eq!(read(&png).unwrap(), pixels);
}

#[test]
fn a_dark_digit_on_a_light_background_is_inverted() {
    let (pixels, _) = digit();
    let negative: Vec<u8> = pixels.iter().map(|v| 255 - to_8bit(*v)).collect();
    let png = encode(png::ColorType::Grayscale, png::BitDepth::Eight, None, &negative);
    assert_eq!(read(&png).unwrap(), pixels);
}

#[test]
fn a_png_of_the_wrong_size_names_its_size_and_depth() {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, 28, 28);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Four);
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&[0u8; 28 * 14]).unwrap();
    }
    let err = read(&out).unwrap_err().to_string();
    assert!(err.contains("expected a 8x8 image, got 28x28 (4-bit"), "{err}");
}

/// CRC-32 of PNG chunks (ISO 3309), to forge a chunk whose CRC is right but whose content is not.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for b in bytes {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn altered_image_data_with_a_fixed_up_crc_is_refused() {
    let (pixels, _) = digit();
    let grey: Vec<u8> = pixels.iter().map(|v| to_8bit(*v)).collect();
    // Stored without compression, so that a changed byte still inflates and only the checksum tells.
    let mut png = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png, SIDE, SIDE);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_deflate_compression(png::DeflateCompression::NoCompression);
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&grey).unwrap();
    }
    let at = png.windows(4).position(|w| w == b"IDAT").unwrap();
    let len = u32::from_be_bytes(png[at - 4..at].try_into().unwrap()) as usize;
    // A pixel byte in the middle of the stored block (past the zlib and block headers).
    png[at + 4 + len / 2] ^= 0x40;
    let crc = crc32(&png[at..at + 4 + len]);
    png[at + 4 + len..at + 8 + len].copy_from_slice(&crc.to_be_bytes());
    let err = read(&png).unwrap_err().to_string();
    assert!(err.contains("damaged PNG"), "{err}");
}

#[test]
fn a_missing_file_is_reported_once_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here.png");
    let out = Command::new(env!("CARGO_BIN_EXE_fleetmesh"))
        .env("FLEETMESH_HOME", dir.path())
        .args(["infer", "--model", "digits", "--input"])
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert_eq!(stderr.matches("No such file").count(), 1, "{stderr}");
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
}

#[test]
fn the_committed_sample_csv_still_reads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/digits/sample.csv");
    let rows = read_images(&path, digits::PIXELS, SIDE, digits::MAX_PIXEL).unwrap();
    assert!(!rows.is_empty() && rows.iter().all(|(p, l)| p.len() == digits::PIXELS && l.is_some()));
}
