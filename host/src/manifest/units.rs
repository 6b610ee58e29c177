//! Human units in the manifest: durations (`"30s"`, `"250ms"`) and sizes (`"64MiB"`).
//! Each is a newtype parsed with `serde(try_from = "String")`, so a bad value is reported by
//! the TOML parser with its line and a message that says what to write instead.

use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// A duration written as a number and a unit: `ms`, `s`, `m` or `h` (`"30s"`, `"1.5s"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HumanDuration(pub Duration);

impl TryFrom<String> for HumanDuration {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let hint = || {
            format!(
                "invalid duration {text:?}: write a number and a unit, like \"250ms\", \"30s\", \"5m\" or \"1h\""
            )
        };
        let n: f64 = number.parse().map_err(|_| hint())?;
        let secs = match unit.trim() {
            "ms" => n / 1000.0,
            "s" => n,
            "m" | "min" => n * 60.0,
            "h" => n * 3600.0,
            _ => return Err(hint()),
        };
        if !secs.is_finite() || secs < 0.0 || secs > 1e9 {
            return Err(hint());
        }
        Ok(HumanDuration(Duration::from_secs_f64(secs)))
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

    fn try_from(text: String) -> Result<Self, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let hint = || {
            format!(
                "invalid size {text:?}: write a whole number and a unit, like \"512KiB\", \"64MiB\" or \"1GiB\""
            )
        };
        let n: u64 = number.parse().map_err(|_| hint())?;
        let scale: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" | "MB" | "GB" | "kb" | "mb" | "gb" => {
                return Err(format!(
                    "invalid size {text:?}: sizes use binary units; write \"{n}{}iB\"",
                    unit[..1].to_uppercase()
                ));
            }
            _ => return Err(hint()),
        };
        n.checked_mul(scale).map(ByteSize).ok_or_else(hint)
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
    }

    #[test]
    fn sizes_parse_binary_units_and_explain_decimal_ones() {
        let b = |s: &str| ByteSize::try_from(s.to_string()).map(|b| b.0);
        assert_eq!(b("64MiB"), Ok(64 << 20));
        assert_eq!(b("512KiB"), Ok(512 << 10));
        assert_eq!(b("100"), Ok(100));
        assert!(b("64MB").unwrap_err().contains("write \"64MiB\""));
        assert!(b("lots").is_err());
        assert_eq!(ByteSize(64 << 20).to_string(), "64MiB");
    }
}
