use serde::{Deserialize, Serialize};

/// An amount in minor units (paise, cents). Never a float.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Money(i64);

impl Money {
    pub const ZERO: Money = Money(0);

    /// A non-negative amount; `None` for a negative one.
    pub fn from_minor(minor: i64) -> Option<Self> {
        (minor >= 0).then_some(Money(minor))
    }

    pub fn minor(self) -> i64 {
        self.0
    }

    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }

    pub fn checked_mul(self, factor: u32) -> Option<Money> {
        self.0.checked_mul(i64::from(factor)).map(Money)
    }
}

impl std::fmt::Display for Money {
    /// Major.minor with two decimals, for humans (emails); APIs carry minor units.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:02}", abs / 100, abs % 100)
    }
}

/// A tax rate in basis points (1800 = 18%).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaxRate {
    basis_points: u32,
}

impl TaxRate {
    /// India's standard GST rate.
    pub const GST_18: TaxRate = TaxRate { basis_points: 1800 };

    pub fn from_basis_points(basis_points: u32) -> Option<Self> {
        (basis_points <= 10_000).then_some(TaxRate { basis_points })
    }

    pub fn basis_points(self) -> u32 {
        self.basis_points
    }

    /// Tax on `amount`, rounded half up to the minor unit.
    pub fn tax_on(self, amount: Money) -> Money {
        let scaled = i128::from(amount.0) * i128::from(self.basis_points);
        let rounded = (scaled + 5_000).div_euclid(10_000);
        // amount * basis_points / 10_000 <= amount, so it fits back into i64.
        Money(i64::try_from(rounded).unwrap_or(i64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn gst_rounds_half_up_to_the_minor_unit() {
        assert_eq!(TaxRate::GST_18.tax_on(Money(100)), Money(18));
        assert_eq!(TaxRate::GST_18.tax_on(Money(25)), Money(5)); // 4.5 -> 5
        assert_eq!(TaxRate::GST_18.tax_on(Money(24)), Money(4)); // 4.32 -> 4
        assert_eq!(TaxRate::GST_18.tax_on(Money::ZERO), Money::ZERO);
    }

    #[test]
    fn negative_amounts_are_not_money() {
        assert_eq!(Money::from_minor(-1), None);
        assert_eq!(Money::from_minor(0), Some(Money::ZERO));
    }

    #[test]
    fn displays_major_and_minor_units() {
        assert_eq!(Money(123_456).to_string(), "1234.56");
        assert_eq!(Money(5).to_string(), "0.05");
    }

    #[test]
    fn tax_rate_over_100_percent_is_refused() {
        assert!(TaxRate::from_basis_points(10_001).is_none());
    }

    proptest! {
        #[test]
        fn tax_never_exceeds_the_amount(minor in 0i64..=i64::MAX, bps in 0u32..=10_000) {
            let rate = TaxRate::from_basis_points(bps).expect("in range");
            let tax = rate.tax_on(Money(minor));
            prop_assert!(tax.minor() >= 0);
            prop_assert!(tax.minor() <= minor);
        }
    }
}
