//! Reports as JSON values.

use crate::error::{Error, Result};
use serde::Serialize;
use serde_json::Value;

/// serde_json's conversion of a report; its only failure (a map with non-string keys) would be
/// a bug in the report type.
pub fn to_json<T: Serialize>(v: &T) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| Error::Numerical(format!("serialising a result: {e}")))
}
