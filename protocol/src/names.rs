//! Names that travel between the sides and become directory names on the
//! receiver: validated here, once, for both.

use crate::ProtocolError;

pub const MAX_NAME_LEN: usize = 255;

/// A volume name: 1..=255 bytes of `[A-Za-z0-9._+-]`, not starting with `.`
/// or `-`. This covers LVM LV names and image file names and cannot escape a
/// directory, hide as a dotfile, or look like an option.
pub fn validate_volume_name(name: &str) -> Result<&str, ProtocolError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'));
    if ok {
        Ok(name)
    } else {
        Err(ProtocolError::BadVolumeName(display_safe(name)))
    }
}

/// A volume as the archive names it: dom0's opaque id, 32 lowercase hex
/// digits (`VolumeId::to_hex`). The receiver refuses anything else, so
/// it never stores a volume it could not later list, prune or delete
/// (`.deleting-` and a 255-byte name would not fit in a file name).
pub fn validate_volume_id(id: &str) -> Result<&str, ProtocolError> {
    if id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(id)
    } else {
        Err(ProtocolError::BadVolumeName(format!(
            "{} (the archive knows volumes by 32 lowercase hex digits)",
            display_safe(id)
        )))
    }
}

/// Session names: `S_` and a 12-digit decimal sequence number, so that
/// byte order is the order of the sessions and the name says nothing of
/// when the session was taken (its time is in dom0's sealed records).
pub fn validate_session_name(name: &str) -> Result<&str, ProtocolError> {
    if parse_session_name(name).is_none() {
        return Err(ProtocolError::BadSessionName(display_safe(name)));
    }
    Ok(name)
}

const SEQ_DIGITS: usize = 12;

/// The session name after `after` (the first is 1).
pub fn session_name(after: Option<&str>) -> String {
    session_name_of(after.and_then(parse_session_name).map_or(1, |p| p + 1))
}

/// The session name of sequence number `n`.
pub fn session_name_of(n: u64) -> String {
    format!("S_{n:012}")
}

/// A session name's sequence number; None if malformed.
pub fn parse_session_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("S_")?;
    if digits.len() != SEQ_DIGITS || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Makes a peer-supplied string safe to print on a terminal: control
/// characters and non-ASCII are escaped, and it is cut at 200 characters.
pub fn display_safe(s: &str) -> String {
    format!("'{}'", escape_text(s, 200))
}

/// Text from a peer made safe for a terminal: printable ASCII and spaces
/// kept, everything else (escape sequences, control characters, non-ASCII)
/// escaped; cut after `max` characters.
pub fn escape_text(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i >= max {
            out.push('…');
            break;
        }
        if c.is_ascii_graphic() || c == ' ' {
            out.push(c);
        } else {
            out.extend(c.escape_default());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_ids_are_32_hex_digits() {
        assert!(validate_volume_id("0123456789abcdef0123456789abcdef").is_ok());
        for bad in [
            "",
            "0123456789abcdef0123456789abcde",
            "0123456789ABCDEF0123456789ABCDEF",
            "0123456789abcdef0123456789abcdef0",
            "v.img",
            &"a".repeat(255),
        ] {
            assert!(validate_volume_id(bad).is_err(), "{bad}");
        }
    }
    use proptest::prelude::*;

    #[test]
    fn volume_names() {
        for ok in ["vm-work-private", "private.img", "a", "root+x_1"] {
            assert!(validate_volume_name(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(256);
        for bad in [
            "", ".", "..", "../x", "a/b", "a\0b", ".hidden", "-rf", "a b", &long, "é",
        ] {
            assert!(validate_volume_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_volume_name(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn session_names_are_a_sequence() {
        let a = session_name(None);
        assert_eq!(a, "S_000000000001");
        assert_eq!(parse_session_name(&a), Some(1));
        let b = session_name(Some(&a));
        assert!(b > a && b == "S_000000000002");
        for bad in [
            "S_1",
            "S_00000000000x",
            "x",
            "S_20251126-056000-000000",
            "S_0000000000011",
        ] {
            assert!(validate_session_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn display_safe_escapes() {
        assert_eq!(display_safe("a\x1b[2Jb\n"), "'a\\u{1b}[2Jb\\n'");
    }

    proptest! {
        #[test]
        fn name_order_is_sequence_order(a in 0u64..999_999_999_999, b in 0u64..999_999_999_999) {
            let (x, y) = (format!("S_{a:012}"), format!("S_{b:012}"));
            prop_assert_eq!(x.cmp(&y), a.cmp(&b));
            prop_assert_eq!(parse_session_name(&x), Some(a));
        }

        #[test]
        fn parsers_never_panic(s in "\\PC{0,40}") {
            let _ = validate_session_name(&s);
            let _ = validate_volume_name(&s);
        }
    }
}
