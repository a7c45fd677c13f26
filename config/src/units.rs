//! Durations and sizes as the config file writes them (`250ms`, `1.5s`,
//! `64KiB`): parsed once here for every field that takes one, and written
//! back the same way when a config is shown (`/config`).

use std::time::Duration;

/// Parses a duration like `250ms`, `1.5s`, `2m`, `1h`, `0s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{text}` needs a unit (ms, s, m or h)"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 500ms, 2s or 1m"))?;
    let scale = match unit {
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in `{text}` (use ms, s, m or h)"
            ))
        }
    };
    let secs = number * scale;
    if !secs.is_finite() || secs > 1e9 {
        return Err(format!("`{text}` is too long"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Formats a duration the way the config file writes them (`250ms`, `2s`).
pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Binary units the config accepts after a number of bytes.
const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];

/// Formats a byte count the way the config file writes sizes (`64KiB`, `1000`).
pub fn format_size(n: u64) -> String {
    for (unit, scale) in UNITS {
        if n >= scale && n.is_multiple_of(scale) {
            return format!("{}{unit}", n / scale);
        }
    }
    n.to_string()
}

/// Parses a size: bytes (`65536`), or a whole number of `KiB`, `MiB`, `GiB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = t.split_at(digits);
    let scale = match unit.trim() {
        "" | "B" => Some(1),
        unit => UNITS.iter().find(|(u, _)| *u == unit).map(|&(_, s)| s),
    };
    match (number.parse::<u64>().ok(), scale) {
        (Some(n), Some(scale)) => n
            .checked_mul(scale)
            .ok_or_else(|| format!("`{text}` is too large")),
        _ => Err(format!(
            "`{text}` is not a size (bytes, or a whole number of KiB, MiB or GiB: `64KiB`)"
        )),
    }
}

/// Serialises a duration as the config file writes it.
pub(crate) fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

/// Serialises an optional duration as the config file writes it.
pub(crate) fn ser_optional_duration<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&format_duration(*d)),
        None => s.serialize_none(),
    }
}

/// Serialises a size as the config file writes it.
pub(crate) fn ser_size<S: serde::Serializer>(n: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_size(u64::from(*n)))
}

/// Serialises an optional size as the config file writes it.
pub(crate) fn ser_optional_size<S: serde::Serializer>(
    n: &Option<u64>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match n {
        Some(n) => s.serialize_str(&format_size(*n)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms").unwrap().as_millis(), 250);
        assert_eq!(parse_duration("1.5s").unwrap().as_millis(), 1500);
        assert_eq!(parse_duration("2m").unwrap().as_secs(), 120);
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("abc").is_err());
    }

    #[test]
    fn durations_and_sizes_are_written_as_read() {
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        for text in ["64KiB", "10MiB", "1GiB", "1000"] {
            assert_eq!(format_size(parse_size(text).unwrap()), text);
        }
        assert_eq!(parse_size("16 KiB").unwrap(), 16 * 1024);
        assert!(parse_size("1.5MiB").is_err());
        assert!(parse_size("99999999999GiB").is_err());
    }
}
