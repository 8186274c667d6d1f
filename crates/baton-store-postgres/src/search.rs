//! The job list's free-text search: the words of a job's id (and of its last 4, 6 and
//! 8 characters), kind, labels (`key:value`) and error, as a `tsvector` built here
//! with explicit positions, so that a word is what it is in the SQLite store (a run
//! of letters and digits, any case) and a term is a phrase of its words, the last one
//! a prefix when it has 3 characters or more. Words are letters and digits only, so
//! nothing a person types reaches the query as syntax.

use std::collections::BTreeMap;

use baton_core::ErrorInfo;
use baton_store::is_prefix_term;

fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

fn last_chars(s: &str, n: usize) -> &str {
    match s.char_indices().rev().nth(n.saturating_sub(1)) {
        Some((at, _)) => &s[at..],
        None => s,
    }
}

/// The text of a job's search vector (`'word':position ...`, cast to `tsvector`).
pub fn vector(
    id: &str,
    kind: &str,
    labels: &BTreeMap<String, String>,
    error: Option<&ErrorInfo>,
) -> String {
    let mut body = format!(
        "{id} {} {} {} {kind}",
        last_chars(id, 8),
        last_chars(id, 6),
        last_chars(id, 4)
    );
    for (k, v) in labels {
        body.push_str(&format!(" {k}:{v}"));
    }
    if let Some(e) = error {
        body.push_str(&format!(" {} {}", e.code, e.message));
    }
    let mut out = String::new();
    for (i, w) in words(&body).enumerate() {
        // tsvector positions stop at 16383; later words keep the last one.
        out.push_str(&format!("'{w}':{} ", (i + 1).min(16_383)));
    }
    out
}

/// The `tsquery` of search terms (checked by `search_terms`): every term, each a
/// phrase of its words.
pub fn query(terms: &[&str]) -> String {
    let mut parts = Vec::new();
    for term in terms {
        let ws: Vec<String> = words(term).collect();
        let n = ws.len();
        let phrase: Vec<String> = ws
            .into_iter()
            .enumerate()
            .map(|(i, w)| {
                if i + 1 == n && is_prefix_term(term) {
                    format!("'{w}':*")
                } else {
                    format!("'{w}'")
                }
            })
            .collect();
        parts.push(format!("({})", phrase.join(" <-> ")));
    }
    parts.join(" & ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_runs_of_letters_and_digits_in_any_case() {
        let v = vector(
            "Report-2024.q1",
            "report",
            &BTreeMap::from([("src".to_string(), "Alfa".to_string())]),
            None,
        );
        assert!(v.starts_with("'report':1 '2024':2 'q1':3 "), "{v}");
        assert!(v.contains("'src':") && v.contains("'alfa':"), "{v}");
        assert_eq!(last_chars("abcdef", 4), "cdef");
        assert_eq!(last_chars("ab", 4), "ab");
    }

    #[test]
    fn a_term_is_a_phrase_whose_last_long_word_is_a_prefix() {
        assert_eq!(query(&["0190f8a2-3b4c"]), "('0190f8a2' <-> '3b4c':*)");
        assert_eq!(query(&["q1", "enc"]), "('q1') & ('enc':*)");
        assert_eq!(query(&["OR:y"]), "('or' <-> 'y')");
    }
}
