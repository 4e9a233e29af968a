//! Spec errors: always `file:line:column: message`, rendered by miette with the snippet.

use miette::{Diagnostic, NamedSource, SourceSpan};

use super::Location;

#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum SpecError {
    /// The spec file could not be read.
    #[error("cannot read spec {path}: {message}")]
    #[diagnostic(help(
        "pass the spec with -f FILE (or CLOUDFLOW_FILE); the default is ./cloudflow.yaml"
    ))]
    Read { path: String, message: String },

    /// The spec is not valid YAML, has an unknown key, a wrong type, or fails validation.
    #[error("{file}:{line}:{column}: {message}")]
    At {
        file: String,
        line: u64,
        column: u64,
        message: String,
        #[source_code]
        src: NamedSource<String>,
        #[label("here")]
        span: Option<SourceSpan>,
    },
}

impl SpecError {
    /// The snippet comes from `source` with every URL's `user:password@` masked (same
    /// columns): a proxy URL next to the line in error never shows its password.
    pub fn at(file: &str, source: &str, loc: Location, message: String) -> Self {
        let masked = mask_credentials(source);
        let source = masked.as_str();
        let span = offset_of(source, loc).map(|o| SourceSpan::new(o.into(), token_len(source, o)));
        SpecError::At {
            file: file.to_string(),
            line: loc.line,
            column: loc.column,
            message,
            src: NamedSource::new(file, source.to_string()),
            span,
        }
    }

    pub fn from_yaml(file: &str, source: &str, err: &serde_saphyr::Error) -> Self {
        let loc = err
            .location()
            .map(|l| Location {
                line: l.line(),
                column: l.column(),
            })
            .unwrap_or_default();
        SpecError::at(file, source, loc, clean_message(&err.to_string()))
    }
}

/// Every `scheme://user:password@host` in `text` with the userinfo replaced by `*`, one per
/// character, so lines and columns stay where they were.
fn mask_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || "\"',]}/#?".contains(c))
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.extend(tail[..at].chars().map(|_| '*'));
                rest = &tail[at..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

/// serde-saphyr appends " at line X column Y" to messages; we print the location up front.
fn clean_message(msg: &str) -> String {
    let first = msg.lines().next().unwrap_or(msg).trim();
    let first = match first.rfind(" at line ") {
        Some(i) => first[..i].trim_end_matches(','),
        None => first,
    };
    // Scalar type errors come out as "invalid u32": say what a user would write instead.
    let expected = match first.strip_prefix("invalid ") {
        Some("u8" | "u16" | "u32" | "u64" | "usize") => Some("a whole number (0 or more)"),
        Some("i8" | "i16" | "i32" | "i64" | "isize") => Some("a whole number"),
        Some("bool") => Some("true or false"),
        Some("f32" | "f64") => Some("a number"),
        _ => None,
    };
    match expected {
        Some(what) => format!("wrong type: expected {what} ({first})"),
        None => first.to_string(),
    }
}

/// Byte offset of a 1-based line/column (columns count characters).
fn offset_of(source: &str, loc: Location) -> Option<usize> {
    if loc.line == 0 {
        return None;
    }
    let mut offset = 0;
    for (i, line) in source.split_inclusive('\n').enumerate() {
        if i as u64 + 1 == loc.line {
            let col = loc.column.saturating_sub(1) as usize;
            let within: usize = line.chars().take(col).map(char::len_utf8).sum();
            return Some(offset + within);
        }
        offset += line.len();
    }
    Some(source.len())
}

fn token_len(source: &str, offset: usize) -> usize {
    source[offset..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != ':' && *c != ',')
        .map(char::len_utf8)
        .sum::<usize>()
        .max(1)
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_in_urls_are_masked_column_for_column() {
        let text =
            "a: \"http://ci:p@ss w\"\nb: [http://u:s3cr%40t@proxy:3128, https://plain.example/x]\n";
        let masked = super::mask_credentials(text);
        assert_eq!(
            masked,
            "a: \"http://****@ss w\"\nb: [http://**********@proxy:3128, https://plain.example/x]\n"
        );
        assert_eq!(masked.len(), text.len());
        assert_eq!(super::mask_credentials("http://ci:pw@h"), "http://*****@h");
    }
}
