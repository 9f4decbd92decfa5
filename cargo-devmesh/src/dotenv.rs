//! `.env` files, as honcho, foreman and docker compose read them: one
//! `KEY=value` a line, `export ` allowed before it, `#` comments and blank
//! lines skipped, values in single quotes taken as they are and in double
//! quotes with `\n`, `\"` and `\\` escapes.

use std::collections::BTreeMap;
use std::path::Path;

use crate::errors::PlanError;

/// The variables of the file at `path`; a missing file has none when
/// `optional`.
pub fn read(path: &Path, optional: bool) -> Result<BTreeMap<String, String>, PlanError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => {
            return Err(PlanError::EnvFileUnreadable {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    parse(&text).map_err(|(line, detail)| PlanError::EnvFile {
        path: path.to_path_buf(),
        line,
        detail: detail.to_owned(),
    })
}

/// The variables of `text`, or the line number and what is wrong with it.
pub(crate) fn parse(text: &str) -> Result<BTreeMap<String, String>, (usize, &'static str)> {
    let mut vars = BTreeMap::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (key, value) = line.split_once('=').ok_or((number, "expected `KEY=value`"))?;
        let key = key.trim();
        let valid = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err((number, "a name is letters, digits and `_`, not starting with a digit"));
        }
        vars.insert(
            key.to_owned(),
            value_of(value.trim()).ok_or((number, "a quote is not closed"))?,
        );
    }
    Ok(vars)
}

fn value_of(raw: &str) -> Option<String> {
    if let Some(rest) = raw.strip_prefix('\'') {
        return rest.strip_suffix('\'').map(str::to_owned);
    }
    if let Some(rest) = raw.strip_prefix('"') {
        let inner = rest.strip_suffix('"')?;
        let mut value = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match (c, c == '\\') {
                (_, true) => match chars.next()? {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (c, false) => value.push(c),
            }
        }
        return Some(value);
    }
    // Unquoted: a ` #` starts a comment.
    let value = raw.split(" #").next().unwrap_or_default().trim_end();
    Some(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_honcho_and_compose_read() {
        let text =
            "# settings\n\nexport A=1\nB = two words # note\nC='$NOT #expanded'\nD=\"line\\nnext \\\"q\\\"\"\nE=\n";
        let vars = parse(text).unwrap();
        assert_eq!(vars["A"], "1");
        assert_eq!(vars["B"], "two words");
        assert_eq!(vars["C"], "$NOT #expanded");
        assert_eq!(vars["D"], "line\nnext \"q\"");
        assert_eq!(vars["E"], "");
    }

    #[test]
    fn a_bad_line_is_named() {
        assert_eq!(parse("A=1\nno equals\n"), Err((2, "expected `KEY=value`")));
        assert_eq!(parse("A='open\n").unwrap_err().0, 1);
        assert_eq!(parse("1A=x\n").unwrap_err().0, 1);
    }
}
