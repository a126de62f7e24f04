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
