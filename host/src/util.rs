//! Small helpers every part may use: writing a file atomically, bounding
//! text that comes from modules.

use std::io;
use std::path::Path;

/// Write a file so that readers see the old or the new content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("no parent directory"))?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("f"),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// The most bytes of text a module may put in an error: what reaches status,
/// the admin API, Events and a container runtime is bounded whatever the
/// module returns.
pub const MAX_MODULE_TEXT: usize = 4 << 10;

/// `text` cut to at most `max` bytes (on a character boundary), saying how
/// much was cut.
pub fn clip(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let total = text.len();
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(&format!("… ({} of {total} bytes cut)", total - end));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_cuts_on_a_character_boundary_and_says_so() {
        assert_eq!(clip("short".into(), 10), "short");
        let cut = clip("ééé".into(), 3); // 6 bytes; 3 falls inside the second é
        assert_eq!(cut, "é… (4 of 6 bytes cut)");
        let big = clip("x".repeat(15 << 20), MAX_MODULE_TEXT);
        assert!(big.len() < MAX_MODULE_TEXT + 64, "{}", big.len());
    }
}
