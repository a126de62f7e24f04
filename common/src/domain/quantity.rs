use serde::{Deserialize, Serialize};

/// How many units of one product a line orders: 1 to [`Quantity::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Quantity(u32);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("quantity must be between 1 and {max}, got {got}", max = Quantity::MAX)]
pub struct QuantityError {
    pub got: i64,
}

impl Quantity {
    pub const MAX: u32 = 1000;

    pub fn parse(value: i64) -> Result<Self, QuantityError> {
        match u32::try_from(value) {
            Ok(n) if (1..=Self::MAX).contains(&n) => Ok(Quantity(n)),
            _ => Err(QuantityError { got: value }),
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = super::integer(deserializer)?;
        Quantity::parse(raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn zero_and_negative_are_refused() {
        assert!(Quantity::parse(0).is_err());
        assert!(Quantity::parse(-3).is_err());
    }

    #[test]
    fn bounds_are_inclusive() {
        assert_eq!(Quantity::parse(1).map(Quantity::get), Ok(1));
        assert_eq!(Quantity::parse(1000).map(Quantity::get), Ok(1000));
        assert!(Quantity::parse(1001).is_err());
    }

    proptest! {
        #[test]
        fn parse_accepts_exactly_the_valid_range(n in any::<i64>()) {
            prop_assert_eq!(Quantity::parse(n).is_ok(), (1..=1000).contains(&n));
        }
    }
}
