//! The conformance map checker: `docs/conformance.md` and the tests agree.
//!
//! # What is checked
//! - Every row of the map parses; no statement appears twice for one version.
//! - Every citation in test code is tagged with its version (`v3.1.1 [MQTT-…]`,
//!   `v5 [MQTT-…]` or `v3.1.1+v5 [MQTT-…]`), is well formed, and names a
//!   statement that is in the map for that version.
//! - A test whose name carries an id (`…_mqtt_3_3_1_4`) also cites it, tagged.
//! - The Tests column of each row lists exactly the test functions that cite the
//!   statement; a row marked `tested` has at least one, and rows marked `n/a` or
//!   `gap` explain themselves in the Note column.
//! - The summary in the map and the coverage sentence in the README match the rows.
//!
//! Test code is every file under a `tests` directory, the `#[cfg(test)]`
//! modules of other files, and `interop/scripts/*.py`. Citations in library code
//! are reported as notes only. With `bless`, the Tests cells, the summary and
//! the README sentence are rewritten from what was found.

pub mod map;
pub mod source;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use map::{Row, Status};

/// A version of the MQTT specification that numbers its statements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    /// MQTT 3.1.1 (OASIS Standard, 29 October 2014).
    V3_1_1,
    /// MQTT 5.0 (OASIS Standard, 7 March 2019).
    V5,
}

impl Version {
    /// How the map writes it.
    pub fn label(self) -> &'static str {
        match self {
            Version::V3_1_1 => "3.1.1",
            Version::V5 => "5.0",
        }
    }

    /// How a citation in code is tagged.
    pub fn tag(self) -> &'static str {
        match self {
            Version::V3_1_1 => "v3.1.1",
            Version::V5 => "v5",
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The map file, relative to the repository root.
pub const MAP: &str = "docs/conformance.md";
/// The README, relative to the repository root.
pub const README: &str = "README.md";

const SUMMARY_START: &str = "<!-- summary:start -->";
const SUMMARY_END: &str = "<!-- summary:end -->";
const README_START: &str = "<!-- conformance:start -->";
const README_END: &str = "<!-- conformance:end -->";

/// Directories never scanned (build output, data, VCS) and the checker's own
/// sources, whose examples would otherwise count as citations.
const SKIP_DIRS: &[&str] = &["target", "tern-data", "node_modules"];
const SKIP_PATHS: &[&str] = &["crates/tern-testkit/src/conformance"];

/// The outcome of a check.
#[derive(Debug, Default)]
pub struct Report {
    /// Disagreements that fail the check.
    pub problems: Vec<String>,
    /// Things worth knowing that do not fail it (citations in library code).
    pub notes: Vec<String>,
    /// Coverage per version: (tested, binding, not applicable, total).
    pub coverage: BTreeMap<Version, Counts>,
    /// Files rewritten by `bless`.
    pub rewritten: Vec<String>,
}

/// Row counts for one version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Rows in the map.
    pub total: usize,
    /// Rows marked tested.
    pub tested: usize,
    /// Rows marked gap.
    pub gaps: usize,
    /// Rows marked n/a.
    pub not_applicable: usize,
}

impl Counts {
    /// Statements that bind Tern: tested plus known gaps.
    pub fn binding(&self) -> usize {
        self.tested + self.gaps
    }

    fn add(&mut self, o: Counts) {
        self.total += o.total;
        self.tested += o.tested;
        self.gaps += o.gaps;
        self.not_applicable += o.not_applicable;
    }
}

/// A citation found in a file, with where it was found.
#[derive(Debug)]
struct Found {
    file: String,
    strict: bool,
    test: Option<String>,
    citation: source::Citation,
}

/// Check the repository at `root`; with `bless`, rewrite the derived parts first.
pub fn check(root: &Path, bless: bool) -> io::Result<Report> {
    let mut report = Report::default();
    let map_text = std::fs::read_to_string(root.join(MAP))?;
    let parsed = map::parse(&map_text);
    report.problems.extend(parsed.problems.iter().cloned());
    let rows = parsed.rows;

    let mut keys: BTreeMap<(Version, String), &Row> = BTreeMap::new();
    for r in &rows {
        if let Some(first) = keys.insert((r.version, r.id.clone()), r) {
            report.problems.push(format!(
                "{MAP}:{}: {} MQTT-{} is already listed at line {}",
                r.line, r.version, r.id, first.line
            ));
        }
    }
    let known = |v: Version, id: &str| keys.contains_key(&(v, id.to_string()));
    let known_any = |id: &str| known(Version::V3_1_1, id) || known(Version::V5, id);

    let (found, name_ids) = scan_repository(root)?;
    let mut cited: BTreeMap<(Version, String), BTreeSet<String>> = BTreeMap::new();
    for f in &found {
        let c = &f.citation;
        let at = format!("{}:{}", f.file, c.line);
        let mut complain = |msg: String| {
            if f.strict {
                report.problems.push(format!("{at}: {msg}"));
            } else {
                report.notes.push(format!("{at}: {msg}"));
            }
        };
        if !c.well_formed() {
            complain(format!(
                "`MQTT-{}` is not a statement id of the form a.b.c-n",
                c.id
            ));
            continue;
        }
        if let Some(tag) = &c.bad_tag {
            complain(format!(
                "unknown version tag `{tag}` before MQTT-{}; use v3.1.1, v5 or v3.1.1+v5",
                c.id
            ));
            continue;
        }
        if c.versions.is_empty() {
            if f.strict {
                complain(format!(
                    "MQTT-{} has no version tag; write `v3.1.1 [MQTT-{0}]`, `v5 [MQTT-{0}]` or `v3.1.1+v5 [MQTT-{0}]`",
                    c.id
                ));
            } else if !known_any(&c.id) {
                complain(format!("MQTT-{} is not a statement of either version", c.id));
            }
            continue;
        }
        for &v in &c.versions {
            if !known(v, &c.id) {
                complain(format!(
                    "MQTT-{} is not a statement of MQTT {v} (see {MAP})",
                    c.id
                ));
            } else if let Some(t) = &f.test {
                cited.entry((v, c.id.clone())).or_default().insert(t.clone());
            }
        }
    }
    for (file, line, test, id, tagged_in_test) in &name_ids {
        if !known_any(id) {
            report.problems.push(format!(
                "{file}:{line}: test `{test}` is named after MQTT-{id}, which is not a statement of either version"
            ));
        } else if !tagged_in_test {
            report.problems.push(format!(
                "{file}:{line}: test `{test}` is named after MQTT-{id} but does not cite it with a version tag"
            ));
        }
    }

    // Rows against the citations.
    let mut new_map = map_text.clone();
    let mut line_fixes: BTreeMap<usize, String> = BTreeMap::new();
    for r in &rows {
        let expected: Vec<String> = cited
            .get(&(r.version, r.id.clone()))
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        if r.tests != expected {
            if bless {
                line_fixes.insert(r.line, map::render_tests(&expected));
            } else {
                report.problems.push(format!(
                    "{MAP}:{}: {} MQTT-{}: Tests should be [{}] (the tests that cite it), not [{}]",
                    r.line,
                    r.version,
                    r.id,
                    map::render_tests(&expected),
                    map::render_tests(&r.tests)
                ));
            }
        }
        match r.status {
            Status::Tested if expected.is_empty() => report.problems.push(format!(
                "{MAP}:{}: {} MQTT-{} is marked tested but no test cites it",
                r.line, r.version, r.id
            )),
            Status::NotApplicable | Status::Gap if r.note.is_empty() => report.problems.push(format!(
                "{MAP}:{}: {} MQTT-{} needs a Note saying why it is not tested",
                r.line, r.version, r.id
            )),
            _ => {}
        }
        if r.requirement.is_empty() {
            report.problems.push(format!(
                "{MAP}:{}: {} MQTT-{} needs its requirement",
                r.line, r.version, r.id
            ));
        }
    }
    if !line_fixes.is_empty() {
        new_map = new_map
            .lines()
            .enumerate()
            .map(|(i, l)| match line_fixes.get(&(i + 1)) {
                Some(t) => map::with_tests(l, t),
                None => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n";
    }

    // Coverage: from the statuses in the map.
    for r in &rows {
        let c = report.coverage.entry(r.version).or_default();
        c.total += 1;
        match r.status {
            Status::Tested => c.tested += 1,
            Status::Gap => c.gaps += 1,
            Status::NotApplicable => c.not_applicable += 1,
        }
    }
    let summary = summary_table(&report.coverage);
    let readme_text = std::fs::read_to_string(root.join(README))?;
    let sentence = readme_sentence(&report.coverage);
    match replace_between(&new_map, SUMMARY_START, SUMMARY_END, &summary) {
        Some(updated) if updated == new_map => {}
        Some(updated) if bless => new_map = updated,
        Some(_) => report.problems.push(format!(
            "{MAP}: the summary between {SUMMARY_START} and {SUMMARY_END} should read:\n{summary}"
        )),
        None => report
            .problems
            .push(format!("{MAP}: no {SUMMARY_START} … {SUMMARY_END} block")),
    }
    match replace_between(&readme_text, README_START, README_END, &sentence) {
        Some(updated) if updated == readme_text => {}
        Some(updated) if bless => {
            std::fs::write(root.join(README), updated)?;
            report.rewritten.push(README.to_string());
        }
        Some(_) => report.problems.push(format!(
            "{README}: the text between {README_START} and {README_END} should read:\n{sentence}"
        )),
        None => report
            .problems
            .push(format!("{README}: no {README_START} … {README_END} block")),
    }
    if bless && new_map != map_text {
        std::fs::write(root.join(MAP), &new_map)?;
        report.rewritten.push(MAP.to_string());
    }
    Ok(report)
}

/// The summary table kept in the map.
pub fn summary_table(coverage: &BTreeMap<Version, Counts>) -> String {
    let mut out = String::from(
        "| Specification | Statements | Bind Tern | Tested | Known gaps | Not applicable |\n|---|---|---|---|---|---|\n",
    );
    let mut all = Counts::default();
    for (v, c) in coverage {
        all.add(*c);
        out.push_str(&format!(
            "| MQTT {v} | {} | {} | {} | {} | {} |\n",
            c.total,
            c.binding(),
            c.tested,
            c.gaps,
            c.not_applicable
        ));
    }
    out.push_str(&format!(
        "| Both | {} | {} | {} | {} | {} |\n",
        all.total,
        all.binding(),
        all.tested,
        all.gaps,
        all.not_applicable
    ));
    out
}

/// The coverage sentence kept in the README.
pub fn readme_sentence(coverage: &BTreeMap<Version, Counts>) -> String {
    let mut all = Counts::default();
    let mut parts = Vec::new();
    for (v, c) in coverage {
        all.add(*c);
        parts.push(format!("MQTT {v}: {} of {}", c.tested, c.binding()));
    }
    format!(
        "**{} of {}** normative statements that bind Tern are tested ({}; not applicable: {}). \
         Each statement, with its tests or what is missing, is listed in [docs/conformance.md](docs/conformance.md).\n",
        all.tested,
        all.binding(),
        parts.join("; "),
        all.not_applicable
    )
}

/// `text` with the lines between the marker lines replaced by `body`.
fn replace_between(text: &str, start: &str, end: &str, body: &str) -> Option<String> {
    let s = text.find(start)?;
    let after_start = s + text[s..].find('\n')? + 1;
    let e = after_start + text[after_start..].find(end)?;
    Some(format!("{}{}{}", &text[..after_start], body, &text[e..]))
}

type NameId = (String, usize, String, String, bool);

/// Scan every source file: the citations, and the ids embedded in test names.
fn scan_repository(root: &Path) -> io::Result<(Vec<Found>, Vec<NameId>)> {
    let mut files = Vec::new();
    walk(root, root, &mut files)?;
    files.sort();
    // Files holding the body of a `#[cfg(test)] mod name;`.
    let mut rust = Vec::new();
    let mut test_files: BTreeSet<String> = BTreeSet::new();
    for rel in &files {
        if rel.ends_with(".rs") {
            let text = std::fs::read_to_string(root.join(rel))?;
            let scanned = source::scan_rust(&text);
            for name in &scanned.test_module_files {
                let dir = match rel
                    .strip_suffix("/mod.rs")
                    .or_else(|| rel.strip_suffix("/lib.rs"))
                {
                    Some(d) => d.to_string(),
                    None => rel.trim_end_matches(".rs").to_string(),
                };
                test_files.insert(format!("{dir}/{name}.rs"));
                test_files.insert(format!("{dir}/{name}/mod.rs"));
            }
            rust.push((rel.clone(), text, scanned));
        }
    }
    let mut found = Vec::new();
    let mut name_ids = Vec::new();
    for (rel, text, scanned) in &rust {
        let whole_file_is_test = rel.split('/').any(|c| c == "tests") || test_files.contains(rel.as_str());
        let cites = source::citations(text);
        for c in &cites {
            let in_module = scanned.test_modules.iter().any(|m| m.contains(&c.offset));
            let test = scanned
                .tests
                .iter()
                .filter(|t| t.span.contains(&c.offset))
                .min_by_key(|t| t.span.len())
                .map(|t| t.name.clone());
            found.push(Found {
                file: rel.clone(),
                strict: whole_file_is_test || in_module || test.is_some(),
                test,
                citation: c.clone(),
            });
        }
        for t in &scanned.tests {
            for id in source::ids_in_name(&t.name) {
                let tagged = cites
                    .iter()
                    .any(|c| t.span.contains(&c.offset) && c.id == id && !c.versions.is_empty());
                name_ids.push((rel.clone(), t.line, t.name.clone(), id, tagged));
            }
        }
    }
    for rel in files
        .iter()
        .filter(|f| f.starts_with("interop/") && f.ends_with(".py"))
    {
        let text = std::fs::read_to_string(root.join(rel))?;
        for c in source::citations(&text) {
            found.push(Found {
                file: rel.clone(),
                strict: true,
                test: None,
                citation: c,
            });
        }
    }
    Ok((found, name_ids))
}

/// Collect `.rs` and `.py` files under `dir`, as paths relative to `root` with `/`.
fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path: PathBuf = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = relative(root, &path);
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if name.starts_with('.')
                || SKIP_DIRS.contains(&name.as_str())
                || SKIP_PATHS.contains(&rel.as_str())
            {
                continue;
            }
            walk(root, &path, out)?;
        } else if kind.is_file() && (name.ends_with(".rs") || name.ends_with(".py")) {
            out.push(rel);
        }
    }
    Ok(())
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}
