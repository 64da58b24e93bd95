//! Human-friendly quantities in documents: memory sizes (`"4GiB"`) and
//! durations (`"10m"`).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A number of bytes, written as `"4GiB"`, `"512MiB"`, `"2GB"` or a plain
/// integer count of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const KIB: u64 = 1 << 10;
    pub const MIB: u64 = 1 << 20;
    pub const GIB: u64 = 1 << 30;

    pub fn bytes(self) -> u64 {
        self.0
    }

    pub fn parse(text: &str) -> Result<ByteSize, UnitError> {
        let text = text.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: f64 = number
            .parse()
            .map_err(|_| UnitError::NotASize(text.to_string()))?;
        let multiplier: f64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1.0,
            "k" | "kb" => 1e3,
            "m" | "mb" => 1e6,
            "g" | "gb" => 1e9,
            "t" | "tb" => 1e12,
            "ki" | "kib" => Self::KIB as f64,
            "mi" | "mib" => Self::MIB as f64,
            "gi" | "gib" => Self::GIB as f64,
            "ti" | "tib" => (1u64 << 40) as f64,
            other => return Err(UnitError::SizeUnit(other.to_string())),
        };
        let bytes = number * multiplier;
        if !bytes.is_finite() || bytes > u64::MAX as f64 {
            return Err(UnitError::TooLarge(text.to_string()));
        }
        Ok(ByteSize(bytes.round() as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0;
        let units = [
            (1u64 << 40, "TiB"),
            (Self::GIB, "GiB"),
            (Self::MIB, "MiB"),
            (Self::KIB, "KiB"),
        ];
        for (size, name) in units {
            if bytes >= size {
                let value = bytes as f64 / size as f64;
                return if bytes % size == 0 {
                    write!(f, "{}{name}", bytes / size)
                } else {
                    write!(f, "{value:.1}{name}")
                };
            }
        }
        write!(f, "{bytes}B")
    }
}

/// Documents write a size as a whole number of bytes.
impl utoipa::PartialSchema for ByteSize {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::Integer)
            .minimum(Some(0))
            .description(Some("bytes"))
            .into()
    }
}

impl utoipa::ToSchema for ByteSize {}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(i64),
            Text(String),
        }
        match Raw::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom("expected a size such as \"4GiB\" or a number of bytes")
        })? {
            Raw::Count(n) if n < 0 => Err(serde::de::Error::custom(format!(
                "must be >= 0 bytes, got {n}"
            ))),
            Raw::Count(n) => Ok(ByteSize(n as u64)),
            Raw::Text(text) => ByteSize::parse(&text).map_err(serde::de::Error::custom),
        }
    }
}

/// Why a size or a duration does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("`{0}` is not a size; write e.g. \"4GiB\" or \"512MiB\"")]
    NotASize(String),
    #[error("unknown size unit `{0}`; use B, KiB, MiB, GiB, TiB (or KB, MB, GB, TB)")]
    SizeUnit(String),
    #[error("`{0}` is too large")]
    TooLarge(String),
    #[error("empty duration")]
    EmptyDuration,
    #[error("`{0}`: a number needs a unit (ms, s, m, h)")]
    NoDurationUnit(String),
    #[error("`{0}` is not a duration; write e.g. \"10m\" or \"90s\"")]
    NotADuration(String),
    #[error("unknown duration unit `{unit}` in `{text}`; use ms, s, m or h")]
    DurationUnit { unit: String, text: String },
    #[error("`{0}` is not a usable duration")]
    UnusableDuration(String),
}

/// Parses `"90s"`, `"10m"`, `"1h30m"`, `"500ms"` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(UnitError::EmptyDuration);
    }
    if let Ok(seconds) = text.parse::<f64>() {
        return seconds_to_duration(seconds, text);
    }
    let mut total = 0.0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| UnitError::NoDurationUnit(text.to_string()))?;
        let (number, after) = rest.split_at(digits);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let number: f64 = number
            .parse()
            .map_err(|_| UnitError::NotADuration(text.to_string()))?;
        let scale = match unit.trim() {
            "ms" => 0.001,
            "s" | "sec" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            other => {
                return Err(UnitError::DurationUnit {
                    unit: other.to_string(),
                    text: text.to_string(),
                })
            }
        };
        total += number * scale;
        rest = next;
    }
    seconds_to_duration(total, text)
}

fn seconds_to_duration(seconds: f64, text: &str) -> Result<Duration, UnitError> {
    if !seconds.is_finite() || !(0.0..=1e9).contains(&seconds) {
        return Err(UnitError::UnusableDuration(text.to_string()));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Serde adapter for durations written as text or seconds.
pub mod duration_text {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(value.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(f64),
            Text(String),
        }
        match Raw::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom("expected a duration such as \"10m\" or a number of seconds")
        })? {
            Raw::Seconds(s) => {
                seconds_to_duration(s, &s.to_string()).map_err(serde::de::Error::custom)
            }
            Raw::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// Optional variant of [`duration_text`].
pub mod option_duration_text {
    use super::*;

    pub fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => serializer.serialize_f64(d.as_secs_f64()),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        // `null` (what `serialize` writes for `None`) reads back as `None`.
        #[derive(Deserialize)]
        struct Present(#[serde(with = "duration_text")] Duration);
        Ok(Option::<Present>::deserialize(deserializer)?.map(|p| p.0))
    }
}

/// Formats seconds the way a person reads them: `95s` becomes `1m35s`.
pub fn format_duration(duration: Duration) -> String {
    let total = duration.as_secs();
    let (h, m, s) = (total / 3600, (total % 3600) / 60, total % 60);
    match (h, m) {
        (0, 0) if duration.as_secs_f64() < 10.0 => format!("{:.1}s", duration.as_secs_f64()),
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s:02}s"),
        _ => format!("{h}h{m:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_binary_and_decimal_units() {
        assert_eq!(ByteSize::parse("4GiB").unwrap().bytes(), 4 << 30);
        assert_eq!(ByteSize::parse("512 MiB").unwrap().bytes(), 512 << 20);
        assert_eq!(ByteSize::parse("2GB").unwrap().bytes(), 2_000_000_000);
        assert_eq!(ByteSize::parse("1.5GiB").unwrap().bytes(), 3 << 29);
        assert_eq!(ByteSize::parse("1024").unwrap().bytes(), 1024);
        assert!(ByteSize::parse("4 parsecs")
            .unwrap_err()
            .to_string()
            .contains("unknown size unit"));
        assert!(ByteSize::parse("lots").is_err());
    }

    #[test]
    fn sizes_display_compactly() {
        assert_eq!(ByteSize(4 << 30).to_string(), "4GiB");
        assert_eq!(ByteSize(3 << 29).to_string(), "1.5GiB");
        assert_eq!(ByteSize(100).to_string(), "100B");
    }

    #[test]
    fn optional_durations_round_trip_through_json_including_none() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Holder {
            #[serde(default, with = "option_duration_text")]
            budget: Option<Duration>,
        }
        for value in [None, Some(Duration::from_millis(2500))] {
            let text = serde_json::to_string(&Holder { budget: value }).unwrap();
            let back: Holder = serde_json::from_str(&text).unwrap();
            assert_eq!(back.budget, value, "{text}");
        }
        let missing: Holder = serde_json::from_str("{}").unwrap();
        assert_eq!(missing.budget, None);
        let text: Holder = serde_json::from_str(r#"{"budget": "1m30s"}"#).unwrap();
        assert_eq!(text.budget, Some(Duration::from_secs(90)));
    }

    #[test]
    fn durations_parse_compound_forms() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("12").unwrap(), Duration::from_secs(12));
        assert!(parse_duration("10 fortnights").is_err());
        assert!(parse_duration("-5").is_err());
    }

    #[test]
    fn negative_byte_counts_are_rejected() {
        let error = serde_json::from_value::<ByteSize>(serde_json::json!(-3)).unwrap_err();
        assert!(error.to_string().contains("got -3"));
    }
}
