//! Money: an exact `rust_decimal` amount with its ISO 4217 currency. Never a float.

use std::fmt;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Currencies Stripe counts in whole units (an amount of `500` is ¥500), from Stripe's
/// list of zero-decimal currencies.
const ZERO_DECIMAL_CURRENCIES: [&str; 16] = [
    "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv",
    "xaf", "xof", "xpf",
];

/// Currencies Stripe counts in thousandths (an amount of `5120` is 5.120 KWD), from Stripe's
/// list of three-decimal currencies. Stripe charges them only in multiples of 10 of that
/// unit, which [`Money::minor_units`] enforces.
const THREE_DECIMAL_CURRENCIES: [&str; 5] = ["bhd", "jod", "kwd", "omr", "tnd"];

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
    /// currencies, 3 for its three-decimal ones, 2 for every other.
    pub fn decimals(&self) -> u32 {
        if ZERO_DECIMAL_CURRENCIES.contains(&self.0.as_str()) {
            0
        } else if THREE_DECIMAL_CURRENCIES.contains(&self.0.as_str()) {
            3
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

    /// The amount in the currency's minor unit (cents; yen for zero-decimal currencies; fils
    /// for three-decimal ones), as Stripe wants it; `None` when the amount has fractions of
    /// that unit, does not fit, or is a three-decimal amount Stripe cannot charge (its last
    /// digit must be 0: 5.120 KWD, not 5.125).
    pub fn minor_units(&self) -> Option<i64> {
        let units = self
            .amount
            .checked_mul(Decimal::from(self.currency.minor_per_major()))?;
        if !units.fract().is_zero() {
            return None;
        }
        let units = i64::try_from(units).ok()?;
        if self.currency.decimals() == 3 && units % 10 != 0 {
            return None;
        }
        Some(units)
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

    fn money(amount: &str, currency: &str) -> Money {
        Money::new(
            Decimal::from_str(amount).expect("literal"),
            Currency::parse(currency).expect("literal"),
        )
    }

    #[test]
    fn three_decimal_currencies_count_thousandths_as_stripe_does() {
        for code in ["bhd", "jod", "kwd", "omr", "tnd"] {
            let currency = Currency::parse(code).expect("literal");
            assert_eq!(currency.decimals(), 3, "{code}");
            // Defect 10: 5.120 KWD was sent to Stripe as 512 (0.512 KWD).
            assert_eq!(money("5.120", code).minor_units(), Some(5120), "{code}");
            assert_eq!(money("20", code).minor_units(), Some(20_000), "{code}");
            let back = Money::from_minor_units(5120, currency);
            assert_eq!(back.amount.to_string(), "5.120", "{code}");
            // Stripe refuses a last digit other than 0, and fractions of a fils.
            assert_eq!(money("5.125", code).minor_units(), None, "{code}");
            assert_eq!(money("5.1201", code).minor_units(), None, "{code}");
        }
    }

    #[test]
    fn zero_decimal_currencies_count_whole_units_and_the_rest_cents() {
        for code in [
            "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd",
            "vuv", "xaf", "xof", "xpf",
        ] {
            assert_eq!(
                Currency::parse(code).expect("literal").decimals(),
                0,
                "{code}"
            );
            assert_eq!(money("500", code).minor_units(), Some(500), "{code}");
            assert_eq!(money("500.5", code).minor_units(), None, "{code}");
        }
        for code in ["usd", "eur", "gbp", "chf"] {
            assert_eq!(
                Currency::parse(code).expect("literal").decimals(),
                2,
                "{code}"
            );
        }
        assert_eq!(money("20.01", "EUR").minor_units(), Some(2001));
        assert_eq!(money("0.001", "usd").minor_units(), None);
    }
}
