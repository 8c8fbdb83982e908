//! The request path as routes are matched on it and as the upstream receives it: one
//! normal form, so no spelling of a path can be priced as another route.
//!
//! [`normalise`] decodes percent-encoded unreserved characters (RFC 3986 §2.3), resolves
//! `.` and `..` segments and merges repeated `/`; case is kept. It refuses what has no
//! honest reading: a malformed `%` escape, a `..` that climbs above the root, a path that
//! does not start with `/`. A percent-encoded reserved character stays encoded (with
//! upper-case hex): `%2F` is part of a segment, never a separator, so `/v1%2Fgenerate` is
//! one segment and is priced, and forwarded, as such.

use std::fmt;

/// Why a path was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    /// The path does not start with `/` (`*`, an empty path).
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    MalformedEscape,
    /// A `..` segment above the root.
    AboveRoot,
}

impl PathError {
    /// The reason, for the 400 body.
    pub fn reason(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "the path must start with '/'",
            PathError::MalformedEscape => "a '%' must be followed by two hex digits",
            PathError::AboveRoot => "a '..' segment climbs above the root",
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// The normal form of `path` (a URI path without its query), or why there is none.
pub fn normalise(path: &str) -> Result<String, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    // Decoding first, so `%2E%2E` is the `..` it means to the product.
    let decoded = decode_unreserved(path)?;
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    let mut segments = decoded[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "" | "." => trailing_slash = last,
            ".." => {
                kept.pop().ok_or(PathError::AboveRoot)?;
                trailing_slash = last;
            }
            other => {
                kept.push(other);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || kept.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Decodes `%XX` where it stands for an unreserved character (`A-Z a-z 0-9 - . _ ~`) and
/// upper-cases the hex of every other escape.
fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            // Copy the run up to the next escape as is (keeps any UTF-8 intact).
            let end = bytes[i..]
                .iter()
                .position(|&b| b == b'%')
                .map_or(bytes.len(), |n| i + n);
            out.push_str(&path[i..end]);
            i = end;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex_value),
            bytes.get(i + 2).copied().and_then(hex_value),
        ) else {
            return Err(PathError::MalformedEscape);
        };
        let byte = hi << 4 | lo;
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX_UPPER[usize::from(hi)]));
            out.push(char::from(HEX_UPPER[usize::from(lo)]));
        }
        i += 3;
    }
    Ok(out)
}

const HEX_UPPER: [u8; 16] = *b"0123456789ABCDEF";

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str, expected: Result<&str, PathError>) {
        assert_eq!(normalise(raw).as_deref().map_err(|e| *e), expected, "{raw}");
    }

    #[test]
    fn spellings_of_one_path_normalise_to_it() {
        for (raw, expected) in [
            ("/", "/"),
            ("/v1/generate", "/v1/generate"),
            ("/v1//generate", "/v1/generate"),
            ("//v1///generate", "/v1/generate"),
            ("/v1/./generate", "/v1/generate"),
            ("/v1/x/../generate", "/v1/generate"),
            ("/health/../v1/x", "/v1/x"),
            ("/v1/%67enerate", "/v1/generate"),
            ("/v1/%2E%2E/health", "/health"),
            ("/v1/%2e/generate", "/v1/generate"),
            ("/%7Euser/a%2Db%5Fc", "/~user/a-b_c"),
            ("/v1/x/", "/v1/x/"),
            ("/v1/x/.", "/v1/x/"),
            ("/v1/x/..", "/v1/"),
            ("/v1/x//", "/v1/x/"),
            ("/a/..", "/"),
            ("//", "/"),
            ("/...", "/..."),
            ("/.hidden/..x", "/.hidden/..x"),
        ] {
            check(raw, Ok(expected));
        }
    }

    #[test]
    fn case_and_reserved_escapes_are_kept() {
        check("/V1/Generate", Ok("/V1/Generate"));
        check("/v1%2Fgenerate", Ok("/v1%2Fgenerate"));
        check("/v1%2fgenerate", Ok("/v1%2Fgenerate"));
        check("/a%2F..%2Fb", Ok("/a%2F..%2Fb"));
        check("/q%3Fx%25y%20z", Ok("/q%3Fx%25y%20z"));
        check("/%252e%252e/x", Ok("/%252e%252e/x"));
    }

    #[test]
    fn paths_without_an_honest_reading_are_refused() {
        check("/..", Err(PathError::AboveRoot));
        check("/../v1/x", Err(PathError::AboveRoot));
        check("/v1/../../x", Err(PathError::AboveRoot));
        check("/%2e%2e/x", Err(PathError::AboveRoot));
        check("/v1/%zz", Err(PathError::MalformedEscape));
        check("/v1/%6", Err(PathError::MalformedEscape));
        check("/v1/%", Err(PathError::MalformedEscape));
        check("*", Err(PathError::NotAbsolute));
        check("", Err(PathError::NotAbsolute));
    }
}
