//! SQL text from any client: the shape check never panics, and what it lets through parses
//! without overflowing the stack (libFuzzer's thread has the default 8 MiB, less than a query
//! thread's).
#![no_main]

use earshot_sql::guard;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|sql: &[u8]| {
    let Ok(sql) = std::str::from_utf8(sql) else {
        return;
    };
    if guard::check_shape(sql).is_ok() {
        let _ = guard::parse_one(sql);
    }
});
