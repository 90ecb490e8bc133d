//! Inputs shared by the fuzz targets: topic names and filters built from a
//! small alphabet of levels, so that the topics published and the filters
//! subscribed meet often, with `$` levels, empty levels and arbitrary text mixed
//! in.

use arbitrary::Arbitrary;
use tern_proto::topic::{validate_topic_filter, validate_topic_name};

/// Most levels a generated topic or filter has.
const MAX_LEVELS: usize = 12;

/// One topic level.
#[derive(Arbitrary, Debug, Clone)]
pub enum Level {
    /// `a`
    A,
    /// `b`
    B,
    /// The empty level.
    Empty,
    /// `$SYS`
    Sys,
    /// `$`
    Dollar,
    /// `+`
    Plus,
    /// `#`
    Hash,
    /// Anything: may hold `/` (more levels) or make the result invalid.
    Text(String),
}

/// Levels joined with `/`.
#[derive(Arbitrary, Debug, Clone)]
pub struct Levels(Vec<Level>);

impl Levels {
    fn join(&self) -> String {
        let mut out = String::new();
        for (i, level) in self.0.iter().take(MAX_LEVELS).enumerate() {
            if i > 0 {
                out.push('/');
            }
            out.push_str(match level {
                Level::A => "a",
                Level::B => "b",
                Level::Empty => "",
                Level::Sys => "$SYS",
                Level::Dollar => "$",
                Level::Plus => "+",
                Level::Hash => "#",
                Level::Text(s) => s,
            });
        }
        out
    }

    /// As written, valid or not.
    pub fn raw(&self) -> String {
        self.join()
    }

    /// As a topic name, if it is a valid one.
    pub fn topic(&self) -> Option<String> {
        let t = self.join();
        validate_topic_name(&t).ok().map(|()| t)
    }

    /// As a topic filter (cut after its first `#`), if it is a valid one.
    pub fn filter(&self) -> Option<String> {
        let mut f = self.join();
        if let Some(i) = f.find('#') {
            f.truncate(i + 1);
        }
        validate_topic_filter(&f).ok().map(|()| f)
    }
}
