//! Money: an exact `rust_decimal` amount with its ISO 4217 currency. Never a float.

use std::fmt;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// A lowercase ISO 4217 currency code, as Stripe writes it (`"usd"`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency(String);

impl Currency {
    /// Accepts three ASCII letters, in any case, and keeps them lowercase.
    pub fn parse(code: &str) -> Result<Self, String> {
        if code.len() == 3 && code.bytes().all(|b| b.is_ascii_alphabetic()) {
            Ok(Currency(code.to_ascii_lowercase()))
        } else {
            Err(format!(
                "currency must be a three-letter ISO code such as \"usd\", got {code:?}"
            ))
        }
    }

    /// The code, lowercase.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Decimals of the currency's minor unit as Stripe counts them: 0 for its zero-decimal
    /// currencies, 2 otherwise.
    pub fn decimals(&self) -> u32 {
        const ZERO_DECIMAL: [&str; 16] = [
            "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd",
            "vuv", "xaf", "xof", "xpf",
        ];
        if ZERO_DECIMAL.contains(&self.0.as_str()) {
            0
        } else {
            2
        }
    }

    fn minor_per_major(&self) -> i64 {
        10_i64.pow(self.decimals())
    }
}

impl TryFrom<String> for Currency {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Currency::parse(&value)
    }
}

impl From<Currency> for String {
    fn from(value: Currency) -> Self {
        value.0
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An amount of money: `{"amount":"20.00","currency":"usd"}` in JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    /// Exact decimal amount, serialized as a string.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    /// The currency the amount is in.
    pub currency: Currency,
}

impl Money {
    /// Pairs an amount with its currency.
    pub fn new(amount: Decimal, currency: Currency) -> Self {
        Money { amount, currency }
    }

    /// The amount in the currency's minor unit (cents; yen for zero-decimal currencies), as
    /// Stripe wants it; `None` when the amount has fractions of that unit or does not fit.
    pub fn minor_units(&self) -> Option<i64> {
        let units = self
            .amount
            .checked_mul(Decimal::from(self.currency.minor_per_major()))?;
        if units.fract().is_zero() {
            i64::try_from(units).ok()
        } else {
            None
        }
    }

    /// An amount given in the currency's minor unit, as Stripe gives it.
    pub fn from_minor_units(units: i64, currency: Currency) -> Money {
        Money {
            amount: Decimal::new(units, currency.decimals()),
            currency,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn money_serializes_as_strings() {
        let money = Money::new(
            Decimal::from_str("20.00").expect("literal"),
            Currency::parse("USD").expect("literal"),
        );
        assert_eq!(
            serde_json::to_string(&money).expect("serializes"),
            r#"{"amount":"20.00","currency":"usd"}"#
        );
        assert_eq!(money.minor_units(), Some(2000));
        let back = Money::from_minor_units(2000, Currency::parse("usd").expect("literal"));
        assert_eq!(back.amount.to_string(), "20.00");
        let yen = Money::from_minor_units(500, Currency::parse("jpy").expect("literal"));
        assert_eq!(
            (yen.amount.to_string().as_str(), yen.minor_units()),
            ("500", Some(500))
        );
    }

    #[test]
    fn currency_codes_are_checked() {
        assert!(Currency::parse("us").is_err());
        assert!(Currency::parse("u$d").is_err());
    }
}
