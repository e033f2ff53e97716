//! Postgres's SQLSTATE codes for DataFusion's errors, which drivers map to exception classes.

/// Postgres's SQLSTATE for a DataFusion error message, when one fits (drivers map codes to
/// exception classes that tools catch): `None` keeps the code it has.
pub fn sqlstate_of(message: &str) -> Option<&'static str> {
    let m = message;
    Some(
        if m.contains("Invalid function") || m.contains("No function matches") {
            "42883" // undefined_function
        } else if m.contains(super::functions::UNKNOWN_SETTING) {
            "42704" // undefined_object
        } else if m.contains("table") && m.contains("not found") {
            "42P01" // undefined_table
        } else if m.contains("No field named") || m.contains("Schema error: No field") {
            "42703" // undefined_column
        } else if m.contains("ParserError") || m.contains("SQL error") {
            "42601" // syntax_error
        } else if m.contains("Divide by zero") || m.contains("division by zero") {
            "22012" // division_by_zero
        } else if m.contains("Cannot cast") || m.contains("Cast error") {
            "22P02" // invalid_text_representation
        } else if m.contains("Arrow error: Compute error") && m.contains("overflow") {
            "22003" // numeric_value_out_of_range
        } else {
            return None;
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates() {
        assert_eq!(
            sqlstate_of("Error during planning: Invalid function 'x'"),
            Some("42883")
        );
        assert_eq!(
            sqlstate_of("Error during planning: table 'earshot.public.x' not found"),
            Some("42P01")
        );
        assert_eq!(
            sqlstate_of("Schema error: No field named y."),
            Some("42703")
        );
        assert_eq!(
            sqlstate_of("Arrow error: Divide by zero error"),
            Some("22012")
        );
        assert_eq!(sqlstate_of("something else"), None);
    }
}
