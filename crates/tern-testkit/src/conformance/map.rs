//! `docs/conformance.md`: one table row per normative statement.
//!
//! A row is `| Version | Statement | Binds | Requirement | Status | Tests | Note |`
//! where Version is `3.1.1` or `5.0`, Statement is `MQTT-a.b.c-n`, Binds is
//! `client`, `server` or `both`, Status is `tested`, `n/a` or `gap`, and Tests
//! lists the citing test functions as `` `name` `` separated by commas.

use super::Version;

/// Who a statement binds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binds {
    /// The client only.
    Client,
    /// The server only.
    Server,
    /// Both, or whichever side sends or receives.
    Both,
}

/// Where Tern stands with a statement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// At least one test checks it.
    Tested,
    /// It does not bind Tern (the note says why).
    NotApplicable,
    /// It binds Tern and no test checks it yet (the note says what is missing).
    Gap,
}

/// One row of the map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// 1-based line in the file.
    pub line: usize,
    /// Which specification.
    pub version: Version,
    /// The id without `MQTT-`, e.g. `3.3.1-4`.
    pub id: String,
    /// Who it binds.
    pub binds: Binds,
    /// The paraphrased requirement.
    pub requirement: String,
    /// Tested, n/a or gap.
    pub status: Status,
    /// Test function names from the Tests column.
    pub tests: Vec<String>,
    /// The Note column.
    pub note: String,
}

/// A parsed map, with the problems found while parsing.
#[derive(Debug, Default)]
pub struct Map {
    /// The statement rows, in file order.
    pub rows: Vec<Row>,
    /// Lines that look like rows but do not parse.
    pub problems: Vec<String>,
}

/// The cells of a Markdown table line, without the outer pipes.
pub fn cells(line: &str) -> Option<Vec<String>> {
    let t = line.trim();
    let inner = t.strip_prefix('|')?.strip_suffix('|')?;
    Some(inner.split('|').map(|c| c.trim().to_string()).collect())
}

/// Parse the map's text.
pub fn parse(text: &str) -> Map {
    let mut map = Map::default();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let Some(c) = cells(line) else { continue };
        let version = match c.first().map(String::as_str) {
            Some("3.1.1") => Version::V3_1_1,
            Some("5.0") => Version::V5,
            _ => continue,
        };
        if c.len() != 7 {
            map.problems.push(format!(
                "docs/conformance.md:{n}: a row needs 7 cells, found {}",
                c.len()
            ));
            continue;
        }
        let id = match c[1].strip_prefix("MQTT-") {
            Some(id) if super::source::well_formed_id(id) => id.to_string(),
            _ => {
                map.problems.push(format!(
                    "docs/conformance.md:{n}: statement `{}` is not of the form MQTT-a.b.c-n",
                    c[1]
                ));
                continue;
            }
        };
        let binds = match c[2].as_str() {
            "client" => Binds::Client,
            "server" => Binds::Server,
            "both" => Binds::Both,
            other => {
                map.problems.push(format!(
                    "docs/conformance.md:{n}: Binds `{other}` is not client, server or both"
                ));
                continue;
            }
        };
        let status = match c[4].as_str() {
            "tested" => Status::Tested,
            "n/a" => Status::NotApplicable,
            "gap" => Status::Gap,
            other => {
                map.problems.push(format!(
                    "docs/conformance.md:{n}: Status `{other}` is not tested, n/a or gap"
                ));
                continue;
            }
        };
        let tests = match test_names(&c[5]) {
            Ok(t) => t,
            Err(e) => {
                map.problems.push(format!("docs/conformance.md:{n}: Tests: {e}"));
                continue;
            }
        };
        map.rows.push(Row {
            line: n,
            version,
            id,
            binds,
            requirement: c[3].clone(),
            status,
            tests,
            note: c[6].clone(),
        });
    }
    map
}

/// `` `a`, `b` `` → `["a", "b"]`.
fn test_names(cell: &str) -> Result<Vec<String>, String> {
    if cell.is_empty() {
        return Ok(Vec::new());
    }
    cell.split(',')
        .map(|t| {
            let t = t.trim();
            t.strip_prefix('`')
                .and_then(|t| t.strip_suffix('`'))
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
                .map(str::to_string)
                .ok_or_else(|| format!("`{t}` is not a backquoted test function name"))
        })
        .collect()
}

/// The Tests cell for a list of names.
pub fn render_tests(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Replace the Tests cell (the sixth) of a row line.
pub fn with_tests(line: &str, tests: &str) -> String {
    match cells(line) {
        Some(mut c) if c.len() == 7 => {
            c[5] = tests.to_string();
            format!("| {} |", c.join(" | "))
        }
        _ => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_parse_and_bad_rows_are_reported() {
        let text = "\
| Version | Statement | Binds | Requirement | Status | Tests | Note |
|---|---|---|---|---|---|---|
| 5.0 | MQTT-3.3.1-4 | both | no QoS 3 | tested | `a`, `b_c` | |
| 3.1.1 | MQTT-7.0.0-1 | server | bridges | n/a | | no bridge |
| 5.0 | MQTT-1.2 | both | x | gap | | y |
| 5.0 | MQTT-1.2.3-4 | someone | x | gap | | y |
";
        let m = parse(text);
        assert_eq!(m.rows.len(), 2);
        assert_eq!(m.rows[0].tests, ["a", "b_c"]);
        assert_eq!(m.rows[1].status, Status::NotApplicable);
        assert_eq!(m.problems.len(), 2, "{:?}", m.problems);
        assert_eq!(
            with_tests("| 5.0 | MQTT-1.1.1-1 | both | x | tested | | |", "`t`"),
            "| 5.0 | MQTT-1.1.1-1 | both | x | tested | `t` |  |"
        );
    }
}
