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

/// A NATS server that knows its user by an NKey: a node with the seed in `nkey_file` starts
/// and exchanges messages; one with another seed, or a file that holds no seed, does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reach_nats_with_an_nkey_seed() {
    let user = nkeys::KeyPair::new_user();
    let extra = format!(
        "authorization {{ users: [ {{ nkey: {} }} ] }}\n",
        user.public_key()
    );
    let nats = Nats::start_with(1, true, &extra);
    let dir = std::env::temp_dir().join(format!("tern-cluster-nkey-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let seed_file = dir.join("tern.nk");
    std::fs::write(&seed_file, format!("# tern\n{}\n", user.seed().unwrap())).unwrap();
    let other_file = dir.join("other.nk");
    std::fs::write(&other_file, nkeys::KeyPair::new_user().seed().unwrap()).unwrap();
    let not_a_seed = dir.join("nothing.nk");
    std::fs::write(&not_a_seed, "hello\n").unwrap();
    let with = |name: &str, file: &std::path::Path| {
        let mut c = node::config(&nats, name);
        c.nkey_file = Some(file.to_path_buf());
        c
    };

    let err = Cluster::start(&node::config(&nats, "a"))
        .await
        .expect_err("NATS wants an NKey");
    assert!(matches!(err, ClusterError::Connect { .. }), "{err:?}");
    let err = Cluster::start(&with("a", &other_file))
        .await
        .expect_err("a seed NATS does not know");
    assert!(matches!(err, ClusterError::Connect { .. }), "{err:?}");
    let err = Cluster::start(&with("a", &not_a_seed))
        .await
        .expect_err("no seed in the file");
    assert!(err.to_string().contains("cluster.nkey_file"), "{err}");

    let a = node::start(&with("a", &seed_file)).await;
    let b = node::start(&with("b", &seed_file)).await;
    delivery::exchange_all_qos(&a, &b, V5).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A JWT as NATS wants it: header, claims, Ed25519 signature by `issuer`, base64url.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": format!("{:X}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()),
        "iat": 1_700_000_000u64,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let claims = b64.encode(claims.to_string());
    let signed = format!("{header}.{claims}");
    let signature = b64.encode(issuer.sign(signed.as_bytes()).unwrap());
    format!("{signed}.{signature}")
}

/// A NATS server in operator mode (an operator, an account with JetStream, a user, as `nsc`
/// makes them): a node with the user's `.creds` file starts and exchanges messages; a node
/// without it, or with a file that is not one, does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reach_nats_in_operator_mode_with_a_creds_file() {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let unlimited = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true,
        "conn": -1, "leaf": -1, "mem_storage": -1, "disk_storage": -1, "streams": -1,
        "consumer": -1, "max_ack_pending": -1, "mem_max_stream_bytes": -1,
        "disk_max_stream_bytes": -1, "max_bytes_required": false
    });
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "tern-test",
        serde_json::json!({"type": "operator", "version": 2}),
    );
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        "TERN",
        serde_json::json!({"limits": unlimited, "default_permissions": {"pub": {}, "sub": {}}, "type": "account", "version": 2}),
    );
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        "tern",
        serde_json::json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2}),
    );
    // JetStream wants a system account.
    let system = nkeys::KeyPair::new_account();
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        "SYS",
        serde_json::json!({"type": "account", "version": 2}),
    );
    let extra = format!(
        "operator: \"{operator_jwt}\"\nsystem_account: {sys}\nresolver: MEMORY\n\
         resolver_preload: {{ {sys}: \"{system_jwt}\", {acc}: \"{account_jwt}\" }}\n",
        sys = system.public_key(),
        acc = account.public_key()
    );
    let nats = Nats::start_with(1, true, &extra);
    let dir = std::env::temp_dir().join(format!("tern-cluster-creds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let creds = dir.join("tern.creds");
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        ),
    )
    .unwrap();
    let not_creds = dir.join("other.creds");
    std::fs::write(&not_creds, "hello\n").unwrap();
    let with = |name: &str, file: &std::path::Path| {
        let mut c = node::config(&nats, name);
        c.credentials_file = Some(file.to_path_buf());
        c
    };

    let err = Cluster::start(&node::config(&nats, "a"))
        .await
        .expect_err("NATS in operator mode wants a user JWT");
    assert!(matches!(err, ClusterError::Connect { .. }), "{err:?}");
    let err = Cluster::start(&with("a", &not_creds))
        .await
        .expect_err("not a credentials file");
    assert!(err.to_string().contains("cluster.credentials_file"), "{err}");

    let a = node::start(&with("a", &creds)).await;
    let b = node::start(&with("b", &creds)).await;
    delivery::exchange_all_qos(&a, &b, V3).await;
    let _ = std::fs::remove_dir_all(&dir);
}
