//! Domain types shared by both services. Values that exist are valid: parsing
//! happens once, at the edge.

mod money;
mod order;
mod product;
mod quantity;

pub use money::{Money, TaxRate};
pub use order::{
    EmailDelivery, EmailKind, EmailStatus, Order, OrderLine, OrderStatus, TimelineEntry,
    TimelineEvent, Totals,
};
pub use product::Product;
pub use quantity::{Quantity, QuantityError};

/// How the API writes a time: RFC 3339 in UTC with exactly three fraction
/// digits (`2026-11-21T14:47:43.900Z`), so the strings sort as the times do.
pub fn rfc3339_millis(at: bson::DateTime) -> String {
    at.to_chrono()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod time_format_tests {
    #[test]
    fn times_keep_three_fraction_digits() {
        let at = bson::DateTime::from_millis(1_795_270_063_900);
        assert_eq!(super::rfc3339_millis(at), "2026-11-21T14:07:43.900Z");
    }
}
