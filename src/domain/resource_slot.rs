use std::{collections::BTreeMap, fmt, str::FromStr};

use bigdecimal::{BigDecimal, Zero};
use serde::{Deserialize, Deserializer, Serialize, Serializer, ser::SerializeMap};

/// Bounds that keep a hostile value (say `"1e999999999"`) from turning into a gigabyte of digits.
const MAX_INPUT_LEN: usize = 128;
const MAX_SCALE: i64 = 64;

/// A resource slot map: slot name (`cpu`, `mem`, `cuda.shares`, ...) to an exact, non-negative decimal.
///
/// JSON form is Backend.AI's: an object of decimal strings without exponent (`{"cpu": "4", "cuda.shares": "0.5"}`).
/// Input may also use JSON integers, and exponent strings (`"1e3"` is read as 1000), but never floats, which could
/// not be exact. `null` values are dropped, as Backend.AI does. Sums keep the larger scale, so ten times `0.1` is
/// `1.0`, as in Python's `Decimal` and PostgreSQL's `numeric`.
#[derive(Clone, Default, PartialEq, Eq, diesel::expression::AsExpression, diesel::deserialize::FromSqlRow)]
#[diesel(sql_type = diesel::sql_types::Jsonb)]
pub struct ResourceSlot(BTreeMap<String, BigDecimal>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    #[error("slot {slot:?}: {value:?} is not a decimal number")]
    NotANumber { slot: String, value: String },
    #[error("slot {slot:?}: {value:?} is negative")]
    Negative { slot: String, value: String },
    #[error("slot {slot:?}: {value:?} is out of range")]
    OutOfRange { slot: String, value: String },
    #[error("slot {slot:?}: a JSON float cannot be exact; send the value as a decimal string")]
    Float { slot: String },
    #[error("slot {slot:?}: expected a decimal string, got {kind}")]
    WrongType { slot: String, kind: &'static str },
    #[error("slot name must be 1-64 characters, got {0:?}")]
    BadName(String),
    #[error("a resource slot map must be a JSON object")]
    NotAnObject,
}

impl ResourceSlot {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses one slot value from its decimal text.
    pub fn parse_value(slot: &str, raw: &str) -> Result<BigDecimal, SlotError> {
        let text = raw.trim();
        let err_nan = || SlotError::NotANumber { slot: slot.to_owned(), value: raw.to_owned() };
        if text.is_empty() || text.len() > MAX_INPUT_LEN {
            return Err(if text.is_empty() {
                err_nan()
            } else {
                SlotError::OutOfRange { slot: slot.to_owned(), value: raw.to_owned() }
            });
        }
        // Exponents are bounded before parsing: BigDecimal happily accepts "1e-9999999999".
        if let Some(pos) = text.find(['e', 'E']) {
            let exp: i64 = text[pos + 1..].parse().map_err(|_| err_nan())?;
            if exp.abs() > MAX_SCALE {
                return Err(SlotError::OutOfRange { slot: slot.to_owned(), value: raw.to_owned() });
            }
        }
        if !text.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E')) {
            return Err(err_nan());
        }
        let value = BigDecimal::from_str(text).map_err(|_| err_nan())?;
        let (_, scale) = value.as_bigint_and_exponent();
        if scale.abs() > MAX_SCALE {
            return Err(SlotError::OutOfRange { slot: slot.to_owned(), value: raw.to_owned() });
        }
        if value < BigDecimal::zero() {
            return Err(SlotError::Negative { slot: slot.to_owned(), value: raw.to_owned() });
        }
        // A negative exponent of the representation ("1e3") is normalised to scale 0 for plain output.
        Ok(if scale < 0 { value.with_scale(0) } else { value })
    }

    /// Builds a slot map from `(name, decimal text)` pairs.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, SlotError> {
        let mut out = Self::new();
        for (k, v) in pairs {
            check_name(k)?;
            out.0.insert(k.to_owned(), Self::parse_value(k, v)?);
        }
        Ok(out)
    }

    pub fn from_json_value(value: &serde_json::Value) -> Result<Self, SlotError> {
        let serde_json::Value::Object(map) = value else { return Err(SlotError::NotAnObject) };
        let mut out = Self::new();
        for (k, v) in map {
            check_name(k)?;
            let parsed = match v {
                serde_json::Value::Null => continue,
                serde_json::Value::String(s) => Self::parse_value(k, s)?,
                serde_json::Value::Number(n) if n.is_u64() || n.is_i64() => Self::parse_value(k, &n.to_string())?,
                serde_json::Value::Number(_) => return Err(SlotError::Float { slot: k.clone() }),
                serde_json::Value::Bool(_) => return Err(SlotError::WrongType { slot: k.clone(), kind: "a boolean" }),
                serde_json::Value::Array(_) => return Err(SlotError::WrongType { slot: k.clone(), kind: "an array" }),
                serde_json::Value::Object(_) => {
                    return Err(SlotError::WrongType { slot: k.clone(), kind: "an object" });
                }
            };
            out.0.insert(k.clone(), parsed);
        }
        Ok(out)
    }

    /// The JSON object of decimal strings, as stored in `jsonb` columns.
    pub fn to_json_value(&self) -> serde_json::Value {
        serde_json::Value::Object(self.0.iter().map(|(k, v)| (k.clone(), v.to_plain_string().into())).collect())
    }

    pub fn get(&self, slot: &str) -> Option<&BigDecimal> {
        self.0.get(slot)
    }

    pub fn insert(&mut self, slot: &str, value: BigDecimal) {
        self.0.insert(slot.to_owned(), value);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &BigDecimal)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Adds `other` key-wise; a slot missing on either side counts as zero.
    pub fn add_assign(&mut self, other: &ResourceSlot) {
        for (k, v) in &other.0 {
            match self.0.get_mut(k) {
                Some(acc) => *acc = &*acc + v,
                None => {
                    self.0.insert(k.clone(), v.clone());
                }
            }
        }
    }
}

fn check_name(name: &str) -> Result<(), SlotError> {
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(SlotError::BadName(name.to_owned()));
    }
    Ok(())
}

impl std::ops::Add<&ResourceSlot> for ResourceSlot {
    type Output = ResourceSlot;
    fn add(mut self, rhs: &ResourceSlot) -> ResourceSlot {
        self.add_assign(rhs);
        self
    }
}

impl fmt::Debug for ResourceSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json_value().to_string())
    }
}

impl Serialize for ResourceSlot {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, &v.to_plain_string())?;
        }
        map.end()
    }
}

/// The OpenAPI schema of the JSON form above: an object of slot name to decimal string.
impl utoipa::PartialSchema for ResourceSlot {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
        let value = ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(r"^[0-9]+(\.[0-9]+)?$"))
            .description(Some("an exact, non-negative decimal without exponent"));
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .additional_properties(Some(AdditionalProperties::RefOr(value.into())))
            .description(Some("Resource slots: slot name (`cpu`, `mem`, `cuda.shares`, ...) to a decimal string"))
            .examples([serde_json::json!({"cpu": "4", "mem": "17179869184", "cuda.shares": "0.5"})])
            .into()
    }
}

impl utoipa::ToSchema for ResourceSlot {}

impl<'de> Deserialize<'de> for ResourceSlot {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        Self::from_json_value(&value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn slot(v: serde_json::Value) -> ResourceSlot {
        ResourceSlot::from_json_value(&v).unwrap()
    }

    #[test]
    fn round_trips_backend_ai_json() {
        let s = slot(json!({"cpu": "4", "mem": "17179869184", "cuda.shares": "0.5"}));
        assert_eq!(s.to_json_value(), json!({"cpu": "4", "mem": "17179869184", "cuda.shares": "0.5"}));
        assert_eq!(serde_json::to_value(&s).unwrap(), s.to_json_value());
    }

    #[test]
    fn sums_exactly_without_float_drift() {
        let tenth = slot(json!({"cuda.shares": "0.1"}));
        let mut acc = ResourceSlot::new();
        for _ in 0..10 {
            acc.add_assign(&tenth);
        }
        assert_eq!(acc.to_json_value(), json!({"cuda.shares": "1.0"}));
    }

    #[test]
    fn addition_fills_missing_keys() {
        let a = slot(json!({"cpu": "1", "mem": "2"}));
        let b = slot(json!({"cpu": "0.5", "cuda.device": "1"}));
        assert_eq!((a + &b).to_json_value(), json!({"cpu": "1.5", "mem": "2", "cuda.device": "1"}));
    }

    #[test]
    fn huge_values_stay_exact() {
        let big = "123456789012345678901234567890123456789012";
        let s = slot(json!({ "mem": big }));
        let sum = s.clone() + &s;
        assert_eq!(sum.to_json_value(), json!({"mem": "246913578024691357802469135780246913578024"}));
    }

    #[test]
    fn odd_inputs() {
        // Exponent notation is read exactly and written without exponent.
        assert_eq!(slot(json!({"mem": "1e3"})).to_json_value(), json!({"mem": "1000"}));
        assert_eq!(slot(json!({"cpu": 2})).to_json_value(), json!({"cpu": "2"}));
        assert_eq!(slot(json!({"cpu": null})).to_json_value(), json!({}));
        let err = |v| ResourceSlot::from_json_value(&v).unwrap_err().to_string();
        assert_eq!(err(json!({"cpu": "-1"})), "slot \"cpu\": \"-1\" is negative");
        assert_eq!(err(json!({"cpu": "four"})), "slot \"cpu\": \"four\" is not a decimal number");
        assert_eq!(err(json!({"cpu": ""})), "slot \"cpu\": \"\" is not a decimal number");
        assert_eq!(err(json!({"cpu": "NaN"})), "slot \"cpu\": \"NaN\" is not a decimal number");
        assert_eq!(err(json!({"cpu": "Infinity"})), "slot \"cpu\": \"Infinity\" is not a decimal number");
        assert_eq!(err(json!({"mem": "1e999999999"})), "slot \"mem\": \"1e999999999\" is out of range");
        assert!(err(json!({"cpu": 0.5})).contains("JSON float"));
        assert!(err(json!({"cpu": true})).contains("a boolean"));
        assert_eq!(err(json!(["cpu"])), "a resource slot map must be a JSON object");
        assert!(err(json!({"": "1"})).contains("slot name"));
    }
}
