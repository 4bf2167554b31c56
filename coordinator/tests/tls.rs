//! The gRPC API over TLS: a client trusting the server's CA works; plain text does not.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is a failure report.

use std::process::Command;

use coordinator::server::TlsFiles;
use coordinator::{AdminClient, Target};

#[tokio::test]
async fn clients_reach_a_tls_coordinator_with_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // A throw-away CA, and a server certificate for "localhost" it signs.
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509", "-days", "1", "-subj", "/CN=test CA"][..],
            &ec,
            &["-keyout", &path("ca.key"), "-out", &path("ca.pem")],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req", "-subj", "/CN=localhost"][..],
            &ec,
            &["-keyout", &path("key.pem"), "-out", &path("server.csr")],
        ]
        .concat(),
    );
    std::fs::write(
        dir.path().join("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-days",
        "1",
        "-in",
        &path("server.csr"),
        "-CA",
        &path("ca.pem"),
        "-CAkey",
        &path("ca.key"),
        "-CAcreateserial",
        "-extfile",
        &path("ext.cnf"),
        "-out",
        &path("cert.pem"),
    ]);
    let (cert, key, ca) = (
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
        dir.path().join("ca.pem"),
    );
    let mut config =
        coordinator::Config::new("127.0.0.1:0".parse().unwrap(), "admin-token-for-tests");
    config.tls = Some(TlsFiles { cert, key });
    let running = coordinator::start(config).await.unwrap();
    let port = running.grpc_addr.port();
    let target = Target {
        url: format!("https://localhost:{port}"),
        ca_pem: Some(std::fs::read(&ca).unwrap()),
    };
    let mut admin = AdminClient::connect(target, "admin-token-for-tests")
        .await
        .unwrap();
    let nodes = [("a".to_string(), "r".to_string())];
    admin.create_group("tls-group", &nodes).await.unwrap();
    // Plain text to a TLS port is no connection at all: refused, or never answered (the
    // client's channel keeps trying to reconnect), but never a group.
    let mut plain = AdminClient::connect(
        format!("http://127.0.0.1:{port}").as_str(),
        "admin-token-for-tests",
    )
    .await
    .unwrap();
    let asked = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        plain.create_group("other", &nodes),
    )
    .await;
    assert!(
        !matches!(asked, Ok(Ok(_))),
        "a plain-text client made a group"
    );
    running.shutdown().await;
}
