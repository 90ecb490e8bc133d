//! NATS with credentials and TLS (issue #15: "credentials/TLS to NATS"): a NATS server that
//! wants a user and password and verifies its clients' certificates. A node without them, or
//! with a wrong password, does not start (the error names the NATS URL); with them, two nodes
//! exchange QoS 0/1/2 messages through it.

use tern_cluster::{Cluster, ClusterError};
use tern_testkit::nats::Nats;
use tern_testkit::pki::Pki;
use tern_testkit::raw::{V3, V5};

use crate::{delivery, node};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reach_nats_with_a_password_and_a_client_certificate() {
    let pki = Pki::new(
        &std::env::temp_dir().join(format!("tern-cluster-pki-{}", std::process::id())),
        &["localhost", "127.0.0.1"],
        "tern-a",
    );
    let extra = format!(
        "authorization {{ user: tern, password: s3cret }}\n\
         tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\", verify: true }}\n",
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca.display()
    );
    let nats = Nats::start_with(1, true, &extra);
    let password_file = pki.dir().join("nats.password");
    std::fs::write(&password_file, "s3cret\n").unwrap();
    let with_tls = |name: &str| {
        let mut c = node::config(&nats, name);
        c.ca_file = Some(pki.ca.clone());
        c.cert_file = Some(pki.client_cert.clone());
        c.key_file = Some(pki.client_key.clone());
        c
    };

    // No credentials, no TLS: refused.
    let err = Cluster::start(&node::config(&nats, "a"))
        .await
        .expect_err("NATS wants TLS and a password");
    assert!(matches!(err, ClusterError::Connect { .. }), "{err:?}");
    // TLS, a wrong password: refused.
    let mut wrong = with_tls("a");
    wrong.user = Some("tern".into());
    wrong.password = Some("guess".into());
    let err = Cluster::start(&wrong).await.expect_err("wrong password");
    assert!(matches!(err, ClusterError::Connect { .. }), "{err:?}");
    // A password, no client certificate: refused by `verify`.
    let mut no_cert = node::config(&nats, "a");
    no_cert.ca_file = Some(pki.ca.clone());
    no_cert.user = Some("tern".into());
    no_cert.password_file = Some(password_file.clone());
    let err = Cluster::start(&no_cert)
        .await
        .expect_err("NATS verifies client certificates");
    assert!(matches!(err, ClusterError::Connect { .. }), "{err:?}");
    // A password file that cannot be read: a configuration error naming the key.
    let mut missing = with_tls("a");
    missing.user = Some("tern".into());
    missing.password_file = Some(pki.dir().join("nowhere"));
    let err = Cluster::start(&missing).await.expect_err("no such file");
    assert!(err.to_string().contains("cluster.password_file"), "{err}");

    // Everything right: two nodes exchange messages through it.
    let config = |name: &str| {
        let mut c = with_tls(name);
        c.user = Some("tern".into());
        c.password_file = Some(password_file.clone());
        c
    };
    let a = node::start(&config("a")).await;
    let b = node::start(&config("b")).await;
    delivery::exchange_all_qos(&a, &b, V3).await;
    delivery::exchange_all_qos(&b, &a, V5).await;
}
