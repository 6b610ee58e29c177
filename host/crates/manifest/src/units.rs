//! Human units in the manifest: durations (`"30s"`, `"250ms"`) and sizes (`"64MiB"`).
//! Each is a newtype parsed with `serde(try_from = "String")`, so a bad value is reported by
//! the TOML parser with its line and a message that says what to write instead. The parsing
//! itself is `humantime`'s and `bytesize`'s; the newtypes add the messages and our rules.

use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// A duration written as a number and a unit: `ms`, `s`, `m` or `h` (`"30s"`, `"1.5s"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HumanDuration(pub Duration);

impl TryFrom<String> for HumanDuration {
    type Error = String;

    /// Parsed by `humantime` (`"250ms"`, `"1.5s"`, `"5m"`, `"1h 30m"`); a bare number is
    /// refused, since a unit-less duration is a guess at best.
    fn try_from(text: String) -> Result<Self, String> {
        let hint = || {
            format!(
                "invalid duration {text:?}: write a number and a unit, like \"250ms\", \"30s\", \"5m\" or \"1h\""
            )
        };
        let t = text.trim();
        if t.is_empty() || t.starts_with('-') {
            return Err(hint());
        }
        let d = humantime::parse_duration(t).map_err(|_| hint())?;
        if d > Duration::from_secs(1_000_000_000) {
            return Err(hint());
        }
        Ok(HumanDuration(d))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// A size in bytes written with a binary unit: `B`, `KiB`, `MiB` or `GiB` (`"64MiB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ByteSize(pub u64);

impl TryFrom<String> for ByteSize {
    type Error = String;

    /// Parsed by `bytesize` (`"512KiB"`, `"64 MiB"`, `"100"` bytes), with two rules of
    /// ours on top: whole numbers only, and binary units only — `"64MB"` would be 64 000 000
    /// bytes to `bytesize` and 64 MiB to most readers, so it is refused with the fix.
    fn try_from(text: String) -> Result<Self, String> {
        let t = text.trim();
        let hint = || {
            format!(
                "invalid size {text:?}: write a whole number and a unit, like \"512KiB\", \"64MiB\" or \"1GiB\""
            )
        };
        let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (number, unit) = (&t[..digits], t[digits..].trim());
        if number.is_empty() || unit.starts_with('.') {
            return Err(hint());
        }
        let decimal = !unit.is_empty()
            && !unit.eq_ignore_ascii_case("b")
            && !unit.to_ascii_lowercase().contains('i');
        let size: bytesize::ByteSize = t.parse().map_err(|_| hint())?;
        if decimal {
            return Err(format!(
                "invalid size {text:?}: sizes use binary units; write \"{number}{}iB\"",
                unit[..1].to_uppercase()
            ));
        }
        // `bytesize` saturates on overflow; a size of 2^64 - 1 bytes is never meant.
        if size.as_u64() == u64::MAX {
            return Err(hint());
        }
        Ok(ByteSize(size.as_u64()))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
            write!(f, "{}GiB", b >> 30)
        } else if b >= 1 << 20 && b.is_multiple_of(1 << 20) {
            write!(f, "{}MiB", b >> 20)
        } else if b >= 1 << 10 && b.is_multiple_of(1 << 10) {
            write!(f, "{}KiB", b >> 10)
        } else {
            write!(f, "{b}B")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_all_units() {
        let d = |s: &str| HumanDuration::try_from(s.to_string()).map(|d| d.0);
        assert_eq!(d("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(d("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(d("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(d("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(d("1h"), Ok(Duration::from_secs(3600)));
        assert!(d("30").unwrap_err().contains("write a number and a unit"));
        assert!(d("thirty s").is_err());
        assert!(d("-5s").is_err());
        assert_eq!(d("1h 30m"), Ok(Duration::from_secs(5400)));
    }

    #[test]
    fn sizes_parse_binary_units_and_explain_decimal_ones() {
        let b = |s: &str| ByteSize::try_from(s.to_string()).map(|b| b.0);
        assert_eq!(b("64MiB"), Ok(64 << 20));
        assert_eq!(b("512KiB"), Ok(512 << 10));
        assert_eq!(b("100"), Ok(100));
        assert!(b("64MB").unwrap_err().contains("write \"64MiB\""));
        assert!(b("lots").is_err());
        assert!(b("1.5MiB").unwrap_err().contains("whole number"));
        assert!(b("64kb").unwrap_err().contains("write \"64KiB\""));
        assert_eq!(b("64 MiB"), Ok(64 << 20));
        assert!(b("99999999999GiB").is_err());
        assert_eq!(ByteSize(64 << 20).to_string(), "64MiB");
    }
}
