//! What Postgres clients' metadata code needs beyond `datafusion-postgres`'s catalog: the catalog's
//! array columns as arrays ([`catalog`]), the functions their catalog queries call
//! ([`functions`]), the SQL forms their queries use that DataFusion lacks ([`rewrite`]), every
//! placeholder of the client's text kept in the plan ([`params`]), and Postgres's SQLSTATE codes
//! for DataFusion's errors ([`errors`]).
//!
//! earshot's tables are read-only: they have no keys, indexes, sequences or defaults, and the
//! catalog says so the way Postgres would, with empty results.

mod catalog;
mod errors;
mod functions;
mod params;
mod rewrite;
mod template;

pub use errors::sqlstate_of;
pub use params::keep_placeholders;
pub use rewrite::{rewrite, rewrite_upfront, unplannable};

/// Adds the functions and replaces the catalog tables (see the module docs). Called once per
/// context, after `setup_pg_catalog`.
pub fn install(
    ctx: &datafusion::prelude::SessionContext,
    catalog: &str,
) -> datafusion::common::Result<()> {
    functions::register(ctx);
    catalog::overlay(ctx, catalog)
}
