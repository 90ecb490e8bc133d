//! Starting a broker for a test; the raw MQTT peer is `tern_testkit::raw`, shared
//! with the conformance tests.

use tern_broker::{BrokerBuilder, BrokerHandle, Config};

pub use tern_testkit::raw::{pid, Raw, V3, V5};

/// Start a broker on 127.0.0.1:0.
pub async fn start() -> BrokerHandle {
    start_with(|_| {}).await
}

/// Start a broker on 127.0.0.1:0 with changed settings.
pub async fn start_with(f: impl FnOnce(&mut Config)) -> BrokerHandle {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("tern_broker=debug")
        .try_init();
    BrokerBuilder::new()
        .listen("127.0.0.1:0".parse().unwrap())
        .configure(f)
        .bind()
        .await
        .expect("bind")
        .spawn()
}
