//! Durations on the wire are strings such as `500ms`, `30s`, `10m`, `6h`, `1d` or
//! combinations like `1h30m`.

use std::time::Duration;

/// Parses a duration string. The error says what is wrong, without the field name.
pub fn parse(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    if t.starts_with('-') {
        return Err(format!("{s:?} is negative; durations must be zero or more"));
    }
    let mut total: u128 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return Err(format!(
                "{s:?} is not a duration (expected a number and a unit: ms, s, m, h, d)"
            ));
        }
        let n: u128 = rest[..digits]
            .parse()
            .map_err(|_| format!("{s:?} is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let ms_per = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => {
                return Err(format!(
                    "{s:?} has no unit (use ms, s, m, h or d, e.g. \"30s\")"
                ));
            }
            other => {
                return Err(format!(
                    "{s:?} has an unknown unit {other:?} (use ms, s, m, h or d)"
                ));
            }
        };
        total = total
            .checked_add(n.saturating_mul(ms_per))
            .ok_or_else(|| format!("{s:?} is too large"))?;
    }
    // A hundred years is far beyond any sensible delay or timeout.
    if total > 100 * 365 * 86_400_000 {
        return Err(format!("{s:?} is too large"));
    }
    Ok(Duration::from_millis(total as u64))
}

/// Formats a duration in the same notation, exactly (the largest unit that divides it).
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, per) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms > 0 && ms.is_multiple_of(per) {
            return format!("{}{unit}", ms / per);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<u64, &str>) {
        let got = parse(input).map(|d| d.as_millis() as u64);
        match expected {
            Ok(ms) => assert_eq!(got, Ok(ms), "{input}"),
            Err(part) => {
                let e = got.expect_err(input);
                assert!(e.contains(part), "{input}: {e} lacks {part}");
            }
        }
    }

    #[test]
    fn parses() {
        check("500ms", Ok(500));
        check("30s", Ok(30_000));
        check("10m", Ok(600_000));
        check("6h", Ok(21_600_000));
        check("1d", Ok(86_400_000));
        check("1h30m", Ok(5_400_000));
        check("0s", Ok(0));
        check("-5s", Err("negative"));
        check("5", Err("no unit"));
        check("5y", Err("unknown unit"));
        check("soon", Err("not a duration"));
        check("", Err("empty"));
        check("99999999999999999999999999d", Err("too large"));
    }

    #[test]
    fn formats() {
        assert_eq!(format(Duration::from_secs(30)), "30s");
        assert_eq!(format(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format(Duration::from_secs(7200)), "2h");
        assert_eq!(format(Duration::ZERO), "0ms");
    }
}
