//! The job list's order, its keyset cursors and its free-text terms: what a caller may
//! ask for, checked before any store reads a row.

use std::fmt;

/// The order of the job list, newest first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum JobSort {
    /// By creation (the order the store took the jobs in).
    #[default]
    Created,
    /// By the start of the latest attempt: only jobs that have started.
    Started,
    /// By the end: only jobs that have finished.
    Finished,
}

impl JobSort {
    pub const ALL: [JobSort; 3] = [JobSort::Created, JobSort::Started, JobSort::Finished];

    pub fn as_str(self) -> &'static str {
        match self {
            JobSort::Created => "created",
            JobSort::Started => "started",
            JobSort::Finished => "finished",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("invalid sort {s:?}: expected created, started or finished"))
    }
}

impl fmt::Display for JobSort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a page ends: the sort it belongs to, the last job's sort key (its start or end
/// time; none for `created`) and its row key. Written as `created.SEQ`,
/// `started.MILLIS.SEQ` or `finished.MILLIS.SEQ`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobCursor {
    pub sort: JobSort,
    pub key: Option<i64>,
    pub seq: i64,
}

impl JobCursor {
    /// Reads a cursor given with `sort`: one of another sort, or not a cursor, is
    /// refused with a message naming it.
    pub fn parse(s: &str, sort: JobSort) -> Result<Self, String> {
        let invalid = || format!("invalid cursor {s:?}: pass back a next_cursor of this list");
        let mut parts = s.split('.');
        let name = parts.next().unwrap_or_default();
        let from = JobSort::parse(name).map_err(|_| invalid())?;
        if from != sort {
            return Err(format!(
                "cursor {s:?} belongs to sort={from}, not sort={sort}: start again without a cursor"
            ));
        }
        let numbers: Vec<i64> = parts
            .map(|p| p.parse::<i64>().map_err(|_| invalid()))
            .collect::<Result<_, _>>()?;
        match (sort, numbers.as_slice()) {
            (JobSort::Created, [seq]) => Ok(Self {
                sort,
                key: None,
                seq: *seq,
            }),
            (JobSort::Started | JobSort::Finished, [key, seq]) => Ok(Self {
                sort,
                key: Some(*key),
                seq: *seq,
            }),
            _ => Err(invalid()),
        }
    }
}

impl fmt::Display for JobCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.key {
            Some(key) => write!(f, "{}.{key}.{}", self.sort, self.seq),
            None => write!(f, "{}.{}", self.sort, self.seq),
        }
    }
}

/// A search term whose last word has at least this many characters matches words
/// that start with it (`enc` finds `encode`); a shorter last word matches whole
/// words only (`q1`, `s4`), since its prefix would name too many words to read.
pub const PREFIX_MIN_CHARS: usize = 3;

/// The terms of a free-text search (split at white space; a job matches when it
/// contains every one), or why the text cannot be searched. The index holds words
/// (runs of letters and digits), so a term needs at least one.
pub fn search_terms(text: &str) -> Result<Vec<&str>, String> {
    let terms: Vec<&str> = text.split_whitespace().collect();
    if terms.is_empty() {
        return Err("search text is empty".into());
    }
    if let Some(bare) = terms.iter().find(|t| !t.chars().any(char::is_alphanumeric)) {
        return Err(format!(
            "search term {bare:?} has no letter or digit: the search finds words"
        ));
    }
    Ok(terms)
}

/// Whether a term's last word is long enough to be matched as a prefix.
pub fn is_prefix_term(term: &str) -> bool {
    let last = term
        .chars()
        .rev()
        .skip_while(|c| !c.is_alphanumeric())
        .take_while(|c| c.is_alphanumeric())
        .count();
    last >= PREFIX_MIN_CHARS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_as_written() {
        for c in [
            JobCursor {
                sort: JobSort::Created,
                key: None,
                seq: 42,
            },
            JobCursor {
                sort: JobSort::Finished,
                key: Some(1_700_000_000_000),
                seq: 7,
            },
        ] {
            assert_eq!(JobCursor::parse(&c.to_string(), c.sort), Ok(c));
        }
    }

    #[test]
    fn a_cursor_of_another_sort_or_malformed_is_refused_by_name() {
        let check = |s: &str, sort: JobSort, expected: &str| {
            let e = JobCursor::parse(s, sort).unwrap_err();
            assert!(e.contains(expected), "{s:?}: {e}");
        };
        check("started.5.3", JobSort::Created, "belongs to sort=started");
        check("created.3", JobSort::Finished, "not sort=finished");
        check("42", JobSort::Created, "invalid cursor \"42\"");
        check("created.x", JobSort::Created, "invalid cursor");
        check("started.3", JobSort::Started, "invalid cursor");
        check("created.1.2", JobSort::Created, "invalid cursor");
    }

    #[test]
    fn search_terms_need_a_word() {
        assert_eq!(search_terms(" ab12  x-y:z "), Ok(vec!["ab12", "x-y:z"]));
        assert!(
            search_terms("ab *-*")
                .unwrap_err()
                .contains("\"*-*\" has no letter")
        );
        assert!(search_terms("   ").unwrap_err().contains("empty"));
    }

    #[test]
    fn a_term_is_a_prefix_when_its_last_word_has_three_characters() {
        for (term, prefix) in [
            ("enc", true),
            ("q1", false),
            ("source:s4", false),
            ("source:alf", true),
            ("3e4f5a", true),
            ("ab-", false),
            ("abc-", true),
        ] {
            assert_eq!(is_prefix_term(term), prefix, "{term:?}");
        }
    }
}
