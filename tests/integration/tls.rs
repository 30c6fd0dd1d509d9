//! mqtts:// against mosquitto with TLS and client certificates: the test makes a CA,
//! a server certificate for 127.0.0.1 and a client certificate with openssl, and runs
//! the end-to-end scenario with every client (engine, plant, observer) over TLS with a
//! user name and password. A client that does not trust the CA, or has no client
//! certificate, does not get in; the password never appears in what is printed.
//! Skips where mosquitto or openssl is not installed.

use crate::common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::mosquitto::{mosquitto_binary, start_mosquitto_conf};
use forewarn::mqtt::{BrokerUrl, MqttSink, QoS, TlsSettings};

fn openssl(dir: &Path, args: &[&str]) {
    let ok = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs")
        .success();
    assert!(ok, "openssl {args:?}");
}

/// CA, server (127.0.0.1) and client certificates in `dir`; a second, untrusted CA.
fn make_certs(dir: &Path) {
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    for ca in ["ca", "other-ca"] {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=forewarn-test-{ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
            ],
        );
    }
    for (name, ext) in [("server", true), ("client", false)] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            "",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "",
        ];
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        args[3] = &csr;
        args[12] = &pem;
        if ext {
            args.extend(["-extfile", "san.ext"]);
        }
        openssl(dir, &args);
    }
    // mosquitto drops to its own user before reading the key files.
    use std::os::unix::fs::PermissionsExt;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scenario_runs_over_mqtts_with_client_certificates() {
    let Some(bin) = mosquitto_binary() else {
        eprintln!("SKIPPED: mosquitto is not installed; .ci/run installs it");
        return;
    };
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("SKIPPED: openssl is not installed; .ci/run installs it");
        return;
    }
    let dir = std::env::temp_dir().join(format!("forewarn-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    make_certs(&dir);
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(dir.join("passwords.txt"), "plant:s3cret-pw\n").unwrap();
    let pw = Command::new("mosquitto_passwd")
        .args(["-U", dir.join("passwords.txt").to_str().unwrap()])
        .status();
    let with_passwords = pw.is_ok_and(|s| s.success());
    let conf = dir.join("mosquitto.conf");
    let d = dir.display();
    let mut text = format!(
        "listener {port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\nrequire_certificate true\n"
    );
    if with_passwords {
        text += &format!("allow_anonymous false\npassword_file {d}/passwords.txt\n");
    } else {
        text += "allow_anonymous true\n";
    }
    std::fs::write(&conf, text).unwrap();
    let _broker = start_mosquitto_conf(&bin, port, &conf).expect("mosquitto starts with TLS");

    let mut url = BrokerUrl::parse(&format!("mqtts://plant:s3cret-pw@127.0.0.1:{port}")).unwrap();
    let printed = format!("{url} {url:?}");
    assert!(printed.starts_with("mqtts://plant:***@"), "{printed}");
    assert!(!printed.contains("s3cret"), "{printed}");
    url.tls = Some(
        TlsSettings::from_files(
            Some(&dir.join("ca.pem")),
            Some(&dir.join("client.pem")),
            Some(&dir.join("client.key")),
        )
        .unwrap(),
    );
    let got = common::scenario_over_broker(&url, "tls").await;
    assert!(!got.is_empty());

    // Refused: a CA that did not sign the server's certificate; no client certificate.
    let mut wrong_ca = url.clone();
    wrong_ca.tls =
        Some(TlsSettings::from_files(Some(&dir.join("other-ca.pem")), None, None).unwrap());
    let mut no_cert = url.clone();
    no_cert.tls = Some(TlsSettings::from_files(Some(&dir.join("ca.pem")), None, None).unwrap());
    for (what, u) in [
        ("untrusted CA", wrong_ca),
        ("no client certificate", no_cert),
    ] {
        let mut s = MqttSink::start(u, &format!("refused-{}", what.len()), QoS::AtLeastOnce);
        assert!(
            s.wait_connected(Duration::from_secs(3)).await.is_err(),
            "{what}: connected"
        );
        s.stop().await;
    }
    if with_passwords {
        let mut bad_pw = url.clone();
        bad_pw.password = Some("wrong".into());
        let mut s = MqttSink::start(bad_pw, "refused-pw", QoS::AtLeastOnce);
        assert!(s.wait_connected(Duration::from_secs(3)).await.is_err());
        s.stop().await;
    }
    // Bad files are errors that name the file.
    let e = TlsSettings::from_files(Some(&dir.join("nope.pem")), None, None).unwrap_err();
    assert!(e.to_string().contains("nope.pem"), "{e}");
    let e = TlsSettings::from_files(Some(&dir.join("san.ext")), None, None).unwrap_err();
    assert!(e.to_string().contains("not a PEM file"), "{e}");
    let e = TlsSettings::from_files(None, Some(&dir.join("client.pem")), None).unwrap_err();
    assert!(e.to_string().contains("needs its key"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
