//! The Eclipse Paho interoperability client suites against Tern: `client_test.py`
//! (MQTT 3.1.1, 10 tests) and `client_test5.py` (MQTT 5.0, 27 tests) from
//! paho.mqtt.testing, used in place from `../shared/peers/paho.mqtt.testing` beside
//! the repository (or `$TERN_PAHO_TESTING`). interop/scripts/paho_interop.py runs
//! each test in a process of its own, under its own timeout, against a broker of its
//! own; docs/interop.md explains the configuration and the results.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tern_broker::{BrokerHandle, DeniedSubscription};
use tern_interop::{run, start_tern_with};

/// Every topic is open to the suites' anonymous clients except `test/nosubscribe`,
/// which test_subscribe_failure expects the broker to refuse (with 0x80 in 5.0 too). test_dollar_topics
/// publishes to `$TopicA/B`: `#` does not match a topic starting with `$`, so it is
/// allowed by a rule of its own and the test checks routing, not the ACL.
const ACL: &str = "\
topic readwrite #
topic readwrite $TopicA/#
topic deny test/nosubscribe
";

/// test_server_keep_alive connects with keep-alive 120 and expects Server Keep Alive 60.
const MAX_KEEPALIVE: u16 = 60;

/// test_maximum_packet_size checks that a PUBLISH above the server's Maximum Packet Size
/// gets DISCONNECT 0x95 only when that maximum is below 65,535 (Tern's default is 1 MiB);
/// the suites' other packets are all far smaller.
const MAX_PACKET_SIZE: u32 = 1024;

/// Seconds allowed to one test (the slowest takes about 30 s: its own sleeps).
const TEST_TIMEOUT_SECS: u64 = 60;

/// Limit for a whole run of the driver: the tests run in parallel, one broker each.
const SUITE_LIMIT: Duration = Duration::from_secs(150);

/// Tests that publish right after a second client's SUBSCRIBE without waiting for its
/// SUBACK (they wait on the first client's): if the broker happens to handle the
/// PUBLISH first, the second client gets nothing. A failure with that symptom is run
/// again, alone, on a fresh broker.
const RACY: &[(&str, &str)] = &[("v5", "test_subscribe_options"), ("v5", "test_request_response")];

/// How the race shows: the second client's message list is still empty.
const RACE_SYMPTOM: &str = "AssertionError: 0 != 1 : []";

/// How many times a racy test is run again before its failure counts.
const RACY_RETRIES: usize = 2;

/// The paho.mqtt.testing checkout: `$TERN_PAHO_TESTING` (absolute, or relative to
/// the repository root), else `../shared/peers/paho.mqtt.testing` from the root.
fn paho_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("interop/ is inside the repository");
    let dir = match std::env::var_os("TERN_PAHO_TESTING") {
        Some(d) => root.join(d),
        None => root
            .parent()
            .expect("the repository has a parent directory")
            .join("shared/peers/paho.mqtt.testing"),
    };
    let suite = dir.join("interoperability/client_test5.py");
    assert!(
        suite.is_file(),
        "the Paho interoperability suites are missing: looked for {} (set TERN_PAHO_TESTING \
         to a paho.mqtt.testing checkout; CI has it in shared/peers/ beside the repository)",
        suite.display()
    );
    dir
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("tern-paho-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `n` brokers configured for `suite`, each on its own ephemeral port.
async fn brokers(suite: &str, n: usize, acl: &Path) -> Vec<BrokerHandle> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let b = start_tern_with(|b| {
            b.configure(|c| {
                c.acl_file = Some(acl.to_path_buf());
                // Only for 5.0. A 3.1.1 client cannot be told a Server Keep Alive, so
                // with max_keepalive set Tern refuses 3.1.1 clients asking for none (0)
                // or more: client_test.py connects with 0 unless a test says otherwise.
                if suite == "v5" {
                    c.max_keepalive = MAX_KEEPALIVE;
                    c.max_packet_size = MAX_PACKET_SIZE;
                    // test_subscribe_failure wants 0x80 for the refused filter, and the
                    // suite's SUBACK decoder rejects any other failure code (the 3.1.1 rule;
                    // 5.0 allows 0x87 Not authorized, Tern's default).
                    c.denied_subscription_reason = DeniedSubscription::UnspecifiedError;
                }
            })
        })
        .await
        .unwrap();
        out.push(b);
    }
    out
}

/// Run the driver: `tests` (all when empty) against `ports`. Returns (output, per-test lines).
async fn driver(paho: &Path, suite: &str, ports: &[u16], tests: &[&str]) -> (String, Vec<String>) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/paho_interop.py");
    let ports = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .args([suite, "127.0.0.1", &ports])
        .args(tests)
        .arg("--timeout")
        .arg(TEST_TIMEOUT_SECS.to_string())
        .arg("--paho")
        .arg(paho)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let out = run(cmd, SUITE_LIMIT).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = format!("{stdout}\n{stderr}\n(exit status: {})", out.status);
    let lines = stdout
        .lines()
        .filter(|l| ["PASS ", "FAIL ", "TIMEOUT "].iter().any(|p| l.starts_with(p)))
        .map(str::to_string)
        .collect::<Vec<_>>();
    assert!(
        stdout
            .lines()
            .any(|l| l.ends_with(" failed") && l.contains(" passed, ")),
        "the driver did not finish:\n{text}"
    );
    (text, lines)
}

/// The test name of a result line.
fn name_of(line: &str) -> &str {
    line.split([' ', ':']).nth(1).unwrap_or_default()
}

/// Run a whole suite and check that every test passed (a racy one when run again).
async fn paho_suite(suite: &str, tests: usize) {
    let paho = paho_dir();
    let dir = TempDir::new(suite);
    let acl = dir.0.join("acl");
    std::fs::write(&acl, ACL).unwrap();
    let started = std::time::Instant::now();
    let handles = brokers(suite, tests, &acl).await;
    let ports = handles.iter().map(|b| b.addr().port()).collect::<Vec<_>>();
    let (output, lines) = driver(&paho, suite, &ports, &[]).await;
    println!("{output}");
    assert_eq!(lines.len(), tests, "expected {tests} results:\n{output}");

    let mut problems = Vec::new();
    for line in &lines {
        let name = name_of(line);
        if line.starts_with("PASS ") {
            continue;
        }
        if RACY.contains(&(suite, name)) && line.starts_with("FAIL ") && line.contains(RACE_SYMPTOM) {
            let mut passed = false;
            for attempt in 1..=RACY_RETRIES {
                let fresh = brokers(suite, 1, &acl).await;
                let (again, relines) = driver(&paho, suite, &[fresh[0].addr().port()], &[name]).await;
                println!("racy {name}, run again ({attempt}):\n{again}");
                if relines.iter().all(|l| l.starts_with("PASS ")) {
                    passed = true;
                    break;
                }
            }
            if passed {
                println!("NOTE: {line}\n  passed when run again: the suite's race, see docs/interop.md");
                continue;
            }
        }
        problems.push(line.clone());
    }
    println!("{suite}: {} tests in {:.0?}", lines.len(), started.elapsed());
    assert!(
        problems.is_empty(),
        "Paho {suite} suite against Tern:\n{}\n\ndriver output:\n{output}",
        problems.join("\n")
    );
}

#[tokio::test]
async fn paho_interoperability_suite_v311() {
    paho_suite("v311", 10).await;
}

#[tokio::test]
async fn paho_interoperability_suite_v5() {
    paho_suite("v5", 27).await;
}
