//! Parsing of the values of target options (`wait=60s`, `allow_empty=true`), the same for every
//! scheme.

use std::time::Duration;

use crate::Error;

/// Parses a duration option: `500ms`, `10s`, `5m`, `1h` (a bare number is seconds).
pub(crate) fn parse_duration(key: &str, value: &str) -> Result<Duration, Error> {
    let v = value.trim();
    let bad = || Error::invalid_target(format!("`{key}={value}` is not a duration (e.g. 500ms, 10s, 5m)"));
    let split = v.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(v.len());
    let n: f64 = v[..split].parse().map_err(|_| bad())?;
    let scale = match &v[split..] {
        "ms" => 1e-3,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(n * scale).map_err(|_| bad())
}

/// Parses a boolean option: `true`, `yes`, `1` or a bare key are true; `false`, `no` and `0` are
/// false.
pub(crate) fn parse_bool(key: &str, value: &str) -> Result<bool, Error> {
    match value {
        "" | "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        _ => Err(Error::invalid_target(format!("`{key}={value}` is not true or false"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("wait", "250ms").expect("ms"), Duration::from_millis(250));
        assert_eq!(parse_duration("wait", "1.5s").expect("fraction"), Duration::from_millis(1500));
        assert_eq!(parse_duration("wait", "5m").expect("m"), Duration::from_secs(300));
        assert_eq!(parse_duration("wait", "1h").expect("h"), Duration::from_secs(3600));
        assert_eq!(parse_duration("wait", "7").expect("bare"), Duration::from_secs(7));
        for bad in ["soon", "-1s", "", "5 fortnights", "1e9999h"] {
            assert!(parse_duration("wait", bad).expect_err(bad).is_invalid_target(), "{bad}");
        }
    }

    #[test]
    fn booleans() {
        for (v, want) in [("", true), ("true", true), ("yes", true), ("1", true), ("false", false), ("no", false), ("0", false)] {
            assert_eq!(parse_bool("allow_empty", v).expect(v), want, "{v}");
        }
        assert!(parse_bool("allow_empty", "maybe").expect_err("maybe").is_invalid_target());
    }
}
