//! Postgres's date/time templates (`to_char`, `to_timestamp`, `to_date`) as chrono formats, which
//! DataFusion's functions of the same names take.

/// Postgres's template patterns and their chrono equivalents, longest first so that `HH24` is
/// not read as `HH` then `24`. Matched in any case, as Postgres matches most of them.
const PATTERNS: &[(&str, &str)] = &[
    ("HH24", "%H"),
    ("HH12", "%I"),
    ("IYYY", "%G"),
    ("YYYY", "%Y"),
    ("MONTH", "%B"),
    ("DDD", "%j"),
    ("MON", "%b"),
    ("DAY", "%A"),
    ("HH", "%I"),
    ("MI", "%M"),
    ("SS", "%S"),
    ("MS", "%3f"),
    ("US", "%6f"),
    ("AM", "%p"),
    ("PM", "%p"),
    ("YY", "%y"),
    ("MM", "%m"),
    ("DD", "%d"),
    ("DY", "%a"),
    ("IW", "%V"),
    ("TZ", "%Z"),
    ("OF", "%:z"),
];

/// `template` (Postgres's) as a chrono format. `FM` (no padding) takes the padding off the next
/// number; text in double quotes is literal; anything else that is not a pattern stays as it is.
pub fn to_chrono(template: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    let mut fill_mode = false;
    while let Some(c) = rest.chars().next() {
        if c == '"' {
            let quoted = &rest[1..];
            let (literal, after) = match quoted.find('"') {
                Some(j) => (&quoted[..j], &quoted[j + 1..]),
                None => (quoted, ""),
            };
            out.push_str(&literal.replace('%', "%%"));
            rest = after;
            continue;
        }
        let starts = |p: &str| {
            rest.get(..p.len())
                .is_some_and(|h| h.eq_ignore_ascii_case(p))
        };
        if starts("FM") {
            fill_mode = true;
            rest = &rest[2..];
            continue;
        }
        let pattern = PATTERNS.iter().find(|(p, _)| starts(p));
        match pattern {
            Some((p, chrono)) => {
                if fill_mode && chrono.len() == 2 {
                    out.push('%');
                    out.push('-');
                    out.push_str(&chrono[1..]);
                } else {
                    out.push_str(chrono);
                }
                fill_mode = false;
                rest = &rest[p.len()..];
            }
            None => {
                if c == '%' {
                    out.push('%');
                }
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::to_chrono;

    #[test]
    fn the_templates_dashboard_tools_write() {
        for (postgres, chrono) in [
            ("YYYY-MM-DD HH24:MI:SS.US", "%Y-%m-%d %H:%M:%S.%6f"),
            ("YYYY-MM-DD\"T\"HH24:MI:SS.MS", "%Y-%m-%dT%H:%M:%S.%3f"),
            ("yyyy-mm-dd", "%Y-%m-%d"),
            ("FMDD Mon YYYY, HH12:MI AM", "%-d %b %Y, %I:%M %p"),
            ("IYYY-IW", "%G-%V"),
            ("100% \"50%\"", "100%% 50%%"),
            ("é€ \"unclosed", "é€ unclosed"),
        ] {
            assert_eq!(to_chrono(postgres), chrono, "{postgres}");
        }
    }
}
