//! Several files as one blob, for a model of more than one file (weights, tokenizer, config) that travels
//! P2P under one manifest: the manifest's chunk list covers the bundle (each chunk hash-checked as it
//! arrives), and the bundle's header lists each file's name, length and blake3 (each file hash-checked when
//! it is unpacked).
//!
//! Layout: magic `FMBUNDL1`, file count (u16 little-endian), per file its name length (u8), name (graphic
//! ASCII: no spaces or control characters), length (u64) and blake3 (32 bytes); then the files' bytes in
//! the same order, nothing after.

/// The bundle's first bytes.
pub const MAGIC: &[u8; 8] = b"FMBUNDL1";
/// Most files in one bundle.
pub const MAX_FILES: usize = 16;

/// Why a bundle was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// The bytes end inside the header or a file.
    #[error("the bundle is truncated")]
    Truncated,
    /// The bytes do not start with [`MAGIC`].
    #[error("not a fleetmesh bundle")]
    BadMagic,
    /// No file, or more than [`MAX_FILES`].
    #[error("a bundle holds 1 to 16 files, not {0}")]
    FileCount(usize),
    /// A name that is empty, not printable ASCII, or listed twice.
    #[error("bad or repeated file name in the bundle")]
    BadName,
    /// A file whose bytes do not hash to the header's blake3.
    #[error("{0} does not match its hash in the bundle's header")]
    HashMismatch(String),
    /// Bytes after the last file.
    #[error("{0} bytes after the bundle's last file")]
    Trailing(usize),
}

/// The bundle of `files` (name, bytes), in that order. Names must be 1-255 bytes of graphic ASCII, at most
/// [`MAX_FILES`] files (the caller's constants; [`unpack`] checks what arrives).
pub fn pack(files: &[(&str, &[u8])]) -> Vec<u8> {
    let total: usize = files.iter().map(|(n, b)| 41 + n.len() + b.len()).sum();
    let mut out = Vec::with_capacity(MAGIC.len() + 2 + total);
    out.extend_from_slice(MAGIC);
    out.extend((files.len() as u16).to_le_bytes());
    for (name, bytes) in files {
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.extend((bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(blake3::hash(bytes).as_bytes());
    }
    for (_, bytes) in files {
        out.extend_from_slice(bytes);
    }
    out
}

/// The files of a bundle (name, bytes), each checked against its length and blake3.
pub fn unpack(bytes: &[u8]) -> Result<Vec<(String, &[u8])>, BundleError> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], BundleError> {
        let end = at
            .checked_add(n)
            .filter(|e| *e <= bytes.len())
            .ok_or(BundleError::Truncated)?;
        let out = &bytes[at..end];
        at = end;
        Ok(out)
    };
    if take(MAGIC.len())? != MAGIC {
        return Err(BundleError::BadMagic);
    }
    let count = take(2)?;
    let count = usize::from(u16::from_le_bytes([count[0], count[1]]));
    if count == 0 || count > MAX_FILES {
        return Err(BundleError::FileCount(count));
    }
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let len = usize::from(take(1)?[0]);
        let name = take(len)?;
        if name.is_empty() || !name.iter().all(|c| c.is_ascii_graphic()) {
            return Err(BundleError::BadName);
        }
        let name = String::from_utf8(name.to_vec()).map_err(|_| BundleError::BadName)?;
        if entries.iter().any(|(n, _, _): &(String, u64, &[u8])| *n == name) {
            return Err(BundleError::BadName);
        }
        let mut size = [0u8; 8];
        size.copy_from_slice(take(8)?);
        let hash = take(32)?;
        entries.push((name, u64::from_le_bytes(size), hash));
    }
    let mut files = Vec::with_capacity(count);
    for (name, size, hash) in entries {
        let size = usize::try_from(size).map_err(|_| BundleError::Truncated)?;
        let data = take(size)?;
        if blake3::hash(data).as_bytes() != hash {
            return Err(BundleError::HashMismatch(name));
        }
        files.push((name, data));
    }
    if at != bytes.len() {
        return Err(BundleError::Trailing(bytes.len() - at));
    }
    Ok(files)
}

/// The bytes of the file `name` among unpacked `files`.
pub fn file<'a>(files: &[(String, &'a [u8])], name: &str) -> Option<&'a [u8]> {
    files.iter().find(|(n, _)| n == name).map(|(_, b)| *b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_round_trip_and_every_malformed_bundle_is_a_typed_error() {
        let bundle = pack(&[("a.bin", b"hello"), ("b.json", b"{}")]);
        let files = unpack(&bundle).unwrap();
        assert_eq!(file(&files, "a.bin"), Some(&b"hello"[..]));
        assert_eq!(file(&files, "b.json"), Some(&b"{}"[..]));
        assert_eq!(file(&files, "c"), None);
        for len in 0..bundle.len() {
            assert!(unpack(&bundle[..len]).is_err(), "cut at {len}");
        }
        let mut longer = bundle.clone();
        longer.push(0);
        assert_eq!(unpack(&longer), Err(BundleError::Trailing(1)));
        let mut flipped = bundle.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(unpack(&flipped), Err(BundleError::HashMismatch("b.json".into())));
        let mut magic = bundle.clone();
        magic[0] = b'X';
        assert_eq!(unpack(&magic), Err(BundleError::BadMagic));
        let mut count = bundle.clone();
        count[8..10].copy_from_slice(&17u16.to_le_bytes());
        assert_eq!(unpack(&count), Err(BundleError::FileCount(17)));
        assert_eq!(
            unpack(&pack(&[("x", b""), ("x", b"")])),
            Err(BundleError::BadName)
        );
        assert_eq!(unpack(&pack(&[("a b", b"")])), Err(BundleError::BadName));
        // A length beyond the bytes (u64::MAX) is truncation, not an allocation or an overflow.
        let mut huge = pack(&[("a", b"z")]);
        huge[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(unpack(&huge), Err(BundleError::Truncated));
    }
}
