//! Byte sizes and rates as the files write them: "512MiB", "1.5GiB", "5MB/s".
//!
//! A size is a string `NUMBER [" "] UNIT`: NUMBER is decimal digits with an optional
//! fraction ("1.5"), UNIT one of B, kB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB
//! (powers of 1024), spelled exactly so. A rate is a size followed by "/s". Spellings with two
//! readings are refused rather than guessed: "KB" and "k" (1000 or 1024?), "mb" and "Mb"
//! (megabyte or megabit?). A bare number has no unit and is refused too.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

const DECIMAL: [(&str, u64); 5] =
    [("B", 1), ("kB", 1_000), ("MB", 1_000_000), ("GB", 1_000_000_000), ("TB", 1_000_000_000_000)];
const BINARY: [(&str, u64); 4] = [("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("TiB", 1 << 40)];

/// The largest size taken: OCI's memory fields are signed 64-bit.
const MAX: u64 = i64::MAX as u64;

/// A number of bytes, written with a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(u64);

/// Bytes per second, written as a size followed by "/s".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate(Size);

impl Size {
    pub const fn bytes(self) -> u64 {
        self.0
    }

    pub fn from_bytes(bytes: u64) -> Size {
        Size(bytes)
    }

    pub fn parse(text: &str) -> Result<Size, String> {
        parse_bytes(text, text).map(Size)
    }
}

impl Rate {
    pub const fn bytes_per_second(self) -> u64 {
        self.0 .0
    }

    pub fn parse(text: &str) -> Result<Rate, String> {
        let Some(size) = text.trim_end().strip_suffix("/s") else {
            return Err(format!("{text:?} is not a rate (a size per second, e.g. \"5MB/s\")"));
        };
        parse_bytes(size, text).map(|bytes| Rate(Size(bytes)))
    }
}

/// The bytes that `text` spells; errors quote `shown` (the whole value as written).
fn parse_bytes(text: &str, shown: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    if trimmed.starts_with('-') {
        return Err(format!("{shown:?} is negative"));
    }
    let split = trimmed.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(trimmed.len());
    let (number, unit) = (&trimmed[..split], trimmed[split..].trim_start());
    if number.is_empty() {
        return Err(format!("{shown:?} is not a size (a number and a unit, e.g. \"512MiB\")"));
    }
    if unit.is_empty() {
        return Err(format!("{shown:?} has no unit (one of {})", unit_list()));
    }
    let multiplier = unit_value(unit).map_err(|why| format!("{shown:?}: {why}"))?;
    scale(number, multiplier).map_err(|why| format!("{shown:?} {why}"))
}

fn unit_list() -> String {
    DECIMAL.iter().chain(&BINARY).map(|(u, _)| *u).collect::<Vec<_>>().join(", ")
}

/// The multiplier of a unit as written; the error says what to write instead.
fn unit_value(unit: &str) -> Result<u64, String> {
    if let Some((_, value)) = DECIMAL.iter().chain(&BINARY).find(|(u, _)| *u == unit) {
        return Ok(*value);
    }
    let lower = unit.to_ascii_lowercase();
    let prefix = lower.trim_end_matches('b').trim_end_matches('i');
    let both = DECIMAL[1..].iter().zip(&BINARY).find(|((d, _), _)| d[..1].eq_ignore_ascii_case(prefix));
    match both {
        Some(((decimal, _), (binary, _))) if prefix.len() == 1 => {
            Err(format!("unit {unit:?} is ambiguous: write {decimal} (powers of 1000) or {binary} (powers of 1024)"))
        }
        _ => Err(format!("unknown unit {unit:?} (one of {})", unit_list())),
    }
}

/// `number` ("12", "1.5") times `multiplier`, exactly.
fn scale(number: &str, multiplier: u64) -> Result<u64, String> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || fraction.contains('.') || (number.contains('.') && fraction.is_empty()) {
        return Err("is not a number followed by a unit".to_string());
    }
    if whole.len() + fraction.len() > 30 {
        return Err("is too large".to_string());
    }
    let digits: u128 = format!("{whole}{fraction}").parse().map_err(|_| "is not a number".to_string())?;
    let denominator = 10u128.pow(fraction.len() as u32);
    let scaled = digits * u128::from(multiplier);
    if !scaled.is_multiple_of(denominator) {
        return Err("is not a whole number of bytes".to_string());
    }
    u64::try_from(scaled / denominator).ok().filter(|b| *b <= MAX).ok_or_else(|| "is too large".to_string())
}

/// The exact spelling with the largest unit: binary units first ("512MiB"), then decimal
/// ("5MB"), else bytes. Reads back as the same size.
impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fits = |(_, value): &&(&str, u64)| self.0 != 0 && self.0.is_multiple_of(*value);
        let unit = BINARY.iter().rev().find(fits).or_else(|| DECIMAL.iter().rev().find(fits));
        // pad: a table's width and alignment apply to the whole text.
        match unit {
            Some((name, value)) => f.pad(&format!("{}{name}", self.0 / value)),
            None => f.pad(&format!("{}B", self.0)),
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&format!("{}/s", self.0))
    }
}

/// Accepts strings only; a TOML number gets an error saying that a unit is needed.
struct UnitVisitor<T>(fn(&str) -> Result<T, String>, &'static str);

impl<T> Visitor<'_> for UnitVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.1)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.0)(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        if v < 0 {
            return Err(E::custom(format!("{v} is negative")));
        }
        Err(E::custom(format!("{v} has no unit: write it as a string, e.g. \"{v}MiB\" ({})", self.1)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        Err(E::custom(format!("{v} has no unit: write it as a string, e.g. \"{v}MiB\" ({})", self.1)))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        if v < 0.0 {
            return Err(E::custom(format!("{v} is negative")));
        }
        Err(E::custom(format!("{v} has no unit: write it as a string with a unit ({})", self.1)))
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        d.deserialize_any(UnitVisitor(Size::parse, "a size such as \"512MiB\""))
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Rate, D::Error> {
        d.deserialize_any(UnitVisitor(Rate::parse, "a rate such as \"5MB/s\""))
    }
}

/// A TOML number as written: integer or float. Range checks are the caller's, who knows the
/// field.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Number {
    Int(i64),
    Float(f64),
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Number::Int(n) => write!(f, "{n}"),
            Number::Float(x) => write!(f, "{x}"),
        }
    }
}

struct NumberVisitor;

impl Visitor<'_> for NumberVisitor {
    type Value = Number;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Number, E> {
        Ok(Number::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Number, E> {
        i64::try_from(v).map(Number::Int).map_err(|_| E::custom(format!("{v} is too large")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Number, E> {
        Ok(Number::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Number, E> {
        Err(E::custom(format!("{v:?} is a string: write the number without quotes")))
    }
}

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Number, D::Error> {
        d.deserialize_any(NumberVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_decimal_and_binary_units() {
        let cases = [
            ("512MiB", 512 << 20),
            ("1GiB", 1 << 30),
            ("1.5GiB", 3 << 29),
            ("0.5KiB", 512),
            ("5MB", 5_000_000),
            ("2 kB", 2000),
            ("0B", 0),
            ("4096B", 4096),
            ("1TiB", 1 << 40),
        ];
        for (text, bytes) in cases {
            assert_eq!(Size::parse(text), Ok(Size(bytes)), "{text}");
        }
        assert_eq!(Rate::parse("5MB/s").map(Rate::bytes_per_second), Ok(5_000_000));
        assert_eq!(Rate::parse("100MiB/s").map(Rate::bytes_per_second), Ok(100 << 20));
    }

    #[test]
    fn ambiguous_or_malformed_sizes_are_refused() {
        let cases = [
            ("512", "has no unit"),
            ("-5MiB", "is negative"),
            ("1KB", "ambiguous: write kB (powers of 1000) or KiB"),
            ("1k", "ambiguous"),
            ("1M", "ambiguous"),
            ("1mb", "ambiguous: write MB"),
            ("1Mb", "ambiguous"),
            ("1gib", "ambiguous"),
            ("1 parsec", "unknown unit \"parsec\""),
            ("1.5B", "not a whole number of bytes"),
            ("1..5MiB", "not a number"),
            ("1.MiB", "not a number"),
            ("MiB", "is not a size"),
            ("", "is not a size"),
            ("9999999999TiB", "too large"),
            ("1e3MiB", "unknown unit"),
        ];
        for (text, want) in cases {
            let err = Size::parse(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
        let err = Rate::parse("5MB").unwrap_err();
        assert!(err.contains("not a rate"), "{err}");
        let err = Rate::parse("-5MB/s").unwrap_err();
        assert_eq!(err, "\"-5MB/s\" is negative");
    }

    #[test]
    fn display_reads_back() {
        for bytes in [0, 1, 512 << 20, 5_000_000, 1 << 30, 1536, 3 << 29, 1000, 12345] {
            let shown = Size(bytes).to_string();
            assert_eq!(Size::parse(&shown), Ok(Size(bytes)), "{shown}");
        }
        assert_eq!(Size(512 << 20).to_string(), "512MiB");
        assert_eq!(Size(5_000_000).to_string(), "5MB");
        assert_eq!(Size(3 << 29).to_string(), "1536MiB");
        assert_eq!(Rate(Size(5_000_000)).to_string(), "5MB/s");
    }
}
