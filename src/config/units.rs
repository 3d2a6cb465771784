//! Values with units, as the configuration writes them: durations (`"250ms"`, `"10s"`, `"5m"`,
//! `"1h"`, at most 365 days, or `"off"` where a key allows it), sizes (bytes, or `"64KiB"`,
//! `"16MiB"`, `"1GiB"`) and bounded counts.
//!
//! Each type's `Deserialize` parses and bounds the value, so a bad value is refused while the
//! TOML is read, with its key and line. This module knows no key names and no defaults.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use serde::{Deserialize, Deserializer};

/// Longest duration any key accepts: 365 days. Deadlines are added to the clock (`Instant +
/// duration`), and a few of them together must stay far from where that overflows.
pub const MAX_DURATION: Duration = Duration::from_secs(MAX_DURATION_DAYS * 24 * 3600);
/// [`MAX_DURATION`] in days, as the error messages and README.md say it.
pub const MAX_DURATION_DAYS: u64 = 365;

/// Why a duration or size is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("{0:?} is not a duration; write a whole number and a unit: \"250ms\", \"10s\", \"5m\", \"1h\"")]
    NotADuration(String),
    #[error("{0:?} is too long; the longest duration accepted is {MAX_DURATION_DAYS} days (\"{hours}h\")", hours = MAX_DURATION_DAYS * 24)]
    TooLong(String),
    #[error("{0:?} is not a size; write bytes as a number, or a number and a unit: \"64KiB\", \"16MiB\"")]
    NotASize(String),
}

/// Parse "250ms", "10s", "5m", "1h" (one whole number, one unit), at most [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let hint = || UnitError::NotADuration(s.to_string());
    let too_long = || UnitError::TooLong(s.to_string());
    let unit_ms: u64 = match unit.trim() {
        "ms" => 1,
        "s" => 1000,
        "m" => 60 * 1000,
        "h" => 3600 * 1000,
        _ => return Err(hint()),
    };
    if num.is_empty() {
        return Err(hint());
    }
    // Only digits: a parse error means the number does not fit in a u64.
    let n: u64 = num.parse().map_err(|_| too_long())?;
    let max_ms = MAX_DURATION.as_secs() * 1000;
    let ms = n
        .checked_mul(unit_ms)
        .filter(|&ms| ms <= max_ms)
        .ok_or_else(too_long)?;
    Ok(Duration::from_millis(ms))
}

/// Parse "4096", "64KiB", "16MiB", "1GiB" (binary units; "KB"/"MB" are accepted as the same).
/// The product never wraps: a size that does not fit in a u64 is an error. Each key bounds the
/// value further.
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let hint = || UnitError::NotASize(s.to_string());
    let n: u64 = num.parse().map_err(|_| hint())?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "KB" | "K" => 1024,
        "MiB" | "MB" | "M" => 1024 * 1024,
        "GiB" | "GB" | "G" => 1024 * 1024 * 1024,
        _ => return Err(hint()),
    };
    n.checked_mul(mult).filter(|&v| v > 0).ok_or_else(hint)
}

/// A duration from zero to [`MAX_DURATION`] (`leeway = "0s"` means none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period(pub Duration);

impl<'de> Deserialize<'de> for Period {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map(Period).map_err(de::Error::custom)
    }
}

/// A duration longer than zero and at most [`MAX_DURATION`]: every timeout and interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout(pub Duration);

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Period(p) = Period::deserialize(d)?;
        if p.is_zero() {
            return Err(de::Error::custom("must be longer than zero"));
        }
        Ok(Timeout(p))
    }
}

/// The close code sessions get when the gateway drains (`drain_close_code`): 1001 (going away)
/// or 1012 (service restart), the two codes that say the server, not the session, is ending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainCloseCode(pub crate::ws::CloseCode);

impl<'de> Deserialize<'de> for DrainCloseCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use crate::ws::CloseCode;
        match u16::deserialize(d) {
            Ok(1001) => Ok(DrainCloseCode(CloseCode::GOING_AWAY)),
            Ok(1012) => Ok(DrainCloseCode(CloseCode::SERVICE_RESTART)),
            _ => Err(de::Error::custom(
                "must be 1001 (going away) or 1012 (service restart)",
            )),
        }
    }
}

/// A value, or `"off"` (`idle_timeout`, `ping_interval`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Off<T> {
    Off,
    On(T),
}

impl<T> Off<T> {
    pub fn into_option(self) -> Option<T> {
        match self {
            Off::Off => None,
            Off::On(v) => Some(v),
        }
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Off<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim() == "off" {
            return Ok(Off::Off);
        }
        T::deserialize(s.into_deserializer()).map(Off::On)
    }
}

/// The bound message shared by sizes and counts: "must be between MIN and MAX" or, without an
/// upper bound, "must be at least MIN".
fn bound_message(min: u64, max: u64, unit: &str) -> String {
    if max == u64::MAX {
        format!("must be at least {min}{unit}")
    } else {
        format!("must be between {min} and {max}{unit}")
    }
}

/// A size in bytes from `MIN` to `MAX`: an integer, or a string with a binary unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize<const MIN: u64, const MAX: u64>(pub u64);

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for ByteSize<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl Visitor<'_> for Bytes {
            type Value = u64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of bytes or a size such as \"64KiB\"")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<u64, E> {
                u64::try_from(n)
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| E::custom("must be a positive number of bytes"))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<u64, E> {
                if n == 0 {
                    return Err(E::custom("must be a positive number of bytes"));
                }
                Ok(n)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<u64, E> {
                parse_size(s).map_err(E::custom)
            }
        }
        let n = d.deserialize_any(Bytes)?;
        if !(MIN..=MAX).contains(&n) {
            return Err(de::Error::custom(bound_message(MIN, MAX, " bytes")));
        }
        Ok(ByteSize(n))
    }
}

/// An integer from `MIN` to `MAX` (a count: threads, connections, frames, entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounded<const MIN: u64, const MAX: u64>(pub u64);

impl<const MIN: u64, const MAX: u64> Bounded<MIN, MAX> {
    /// As a `usize`. Every bound in use is far inside it; the saturating fallback only keeps the
    /// conversion free of `as`.
    pub fn usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }

    /// As a `u32`, saturating (see [`Bounded::usize`]).
    pub fn u32(self) -> u32 {
        u32::try_from(self.0).unwrap_or(u32::MAX)
    }
}

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Bounded<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Count<const MIN: u64, const MAX: u64>(PhantomData<()>);
        impl<const MIN: u64, const MAX: u64> Visitor<'_> for Count<MIN, MAX> {
            type Value = u64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<u64, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(bound_message(MIN, MAX, ""))),
                }
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<u64, E> {
                if !(MIN..=MAX).contains(&n) {
                    return Err(E::custom(bound_message(MIN, MAX, "")));
                }
                Ok(n)
            }
        }
        d.deserialize_any(Count::<MIN, MAX>(PhantomData))
            .map(Bounded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("five seconds").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
        assert!(parse_size("1PB").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn durations_are_bounded() {
        assert_eq!(parse_duration("8760h").unwrap(), MAX_DURATION);
        assert_eq!(parse_duration("525600m").unwrap(), MAX_DURATION);
        assert_eq!(parse_duration("31536000000ms").unwrap(), MAX_DURATION);
        for long in [
            "8761h",
            "31536000001ms",
            "3000000000000000h",
            "18446744073709551615ms",
            "18446744073709551616s",
            "99999999999999999999999999h",
        ] {
            let e = parse_duration(long).unwrap_err().to_string();
            assert!(e.contains("365 days"), "{long}: {e}");
        }
    }

    /// Deserialize `value` (TOML) as the value of key `k`.
    fn value<T: DeserializeOwned>(v: &str) -> Result<T, String> {
        #[derive(Deserialize)]
        struct One<T> {
            k: T,
        }
        toml::from_str::<One<T>>(&format!("k = {v}"))
            .map(|o| o.k)
            .map_err(|e| e.message().to_string())
    }

    #[test]
    fn the_types_parse_and_bound_while_reading() {
        assert_eq!(
            value::<Timeout>("\"10s\""),
            Ok(Timeout(Duration::from_secs(10)))
        );
        assert!(value::<Timeout>("\"0s\"")
            .unwrap_err()
            .contains("longer than zero"));
        assert_eq!(value::<Period>("\"0s\""), Ok(Period(Duration::ZERO)));
        assert!(value::<Period>("\"8761h\"")
            .unwrap_err()
            .contains("365 days"));
        assert!(value::<Period>("5").is_err());
        assert_eq!(value::<Off<Timeout>>("\"off\""), Ok(Off::Off));
        assert_eq!(
            value::<Off<Timeout>>("\"1m\""),
            Ok(Off::On(Timeout(Duration::from_secs(60))))
        );
        assert!(value::<Off<Timeout>>("\"of\"").is_err());
        assert_eq!(value::<ByteSize<1, 4096>>("\"4KiB\""), Ok(ByteSize(4096)));
        assert_eq!(value::<ByteSize<1, 4096>>("4096"), Ok(ByteSize(4096)));
        assert_eq!(
            value::<ByteSize<1, 4096>>("4097"),
            Err("must be between 1 and 4096 bytes".into())
        );
        assert_eq!(
            value::<ByteSize<1, 4096>>("-1"),
            Err("must be a positive number of bytes".into())
        );
        assert_eq!(
            value::<ByteSize<1024, { u64::MAX }>>("\"1\""),
            Err("must be at least 1024 bytes".into())
        );
        assert_eq!(value::<Bounded<8, 1000>>("8"), Ok(Bounded(8)));
        assert_eq!(
            value::<Bounded<8, 1000>>("-8"),
            Err("must be between 8 and 1000".into())
        );
        assert_eq!(
            value::<Bounded<1, { u64::MAX }>>("0"),
            Err("must be at least 1".into())
        );
        assert!(value::<Bounded<1, 9>>("\"3\"").is_err());
    }

    /// The number as written times the unit, exactly (u128: no wrapping), in milliseconds.
    fn duration_oracle(digits: &str, unit: &str) -> Option<u128> {
        let n: u128 = digits.parse().ok()?;
        let ms = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return None,
        };
        n.checked_mul(ms)
    }

    fn size_oracle(digits: &str, unit: &str) -> Option<u128> {
        let n: u128 = digits.parse().ok()?;
        let mult = match unit {
            "" | "B" => 1,
            "KiB" | "KB" | "K" => 1 << 10,
            "MiB" | "MB" | "M" => 1 << 20,
            "GiB" | "GB" | "G" => 1 << 30,
            _ => return None,
        };
        n.checked_mul(mult)
    }

    /// An accepted duration can be added to both clocks, twice over, without overflowing.
    fn assert_usable(d: Duration) {
        assert!(d <= MAX_DURATION, "{d:?}");
        let _ = std::time::Instant::now() + d + d;
        let _ = tokio::time::Instant::now() + d + d;
        let _ = std::time::SystemTime::now() + d + d;
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        #[test]
        fn duration_parser_never_panics(s in "\\PC{0,30}") {
            if let Ok(d) = parse_duration(&s) {
                assert_usable(d);
            }
        }

        #[test]
        fn duration_parser_is_exact_and_bounded(
            digits in "[0-9]{1,26}",
            unit in "(ms|s|m|h|d|us|)",
            pad in "( ?)",
        ) {
            let text = format!("{digits}{pad}{unit}");
            let want = duration_oracle(&digits, &unit)
                .filter(|&ms| ms <= MAX_DURATION.as_millis());
            match parse_duration(&text) {
                Ok(d) => {
                    proptest::prop_assert_eq!(Some(d.as_millis()), want, "{}", text);
                    assert_usable(d);
                }
                Err(_) => proptest::prop_assert_eq!(want, None, "{}", text),
            }
        }

        #[test]
        fn size_parser_never_panics_or_wraps(
            digits in "[0-9]{1,22}",
            unit in "(|B|KiB|KB|K|MiB|MB|M|GiB|GB|G|TiB|PB)",
            junk in "\\PC{0,12}",
        ) {
            let _ = parse_size(&junk);
            let text = format!("{digits}{unit}");
            let want = size_oracle(&digits, &unit)
                .filter(|&v| v > 0 && v <= u128::from(u64::MAX));
            match parse_size(&text) {
                Ok(v) => proptest::prop_assert_eq!(Some(u128::from(v)), want, "{}", text),
                Err(_) => proptest::prop_assert_eq!(want, None, "{}", text),
            }
        }
    }
}
