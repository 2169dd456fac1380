//! HTTPS and mutual TLS: TLS 1.2 minimum, certificate-bound tokens. Certificates are made per
//! test with the `openssl` command; requests go through `curl` (both Debian packages).

use crate::consent::three_scenarios;
use crate::support::{for_each_backend_raw, for_each_backend_tls, run_ok, Pki, Server};
use std::path::Path;
use std::process::Command;

fn fingerprint(dir: &Path) -> String {
    let out = run_ok(
        Command::new("sh")
            .arg("-c")
            .arg("openssl x509 -in client.pem -outform DER | sha256sum")
            .current_dir(dir),
    );
    out.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Status code of `curl` to `url` with optional client certificate and token.
fn status(dir: &Path, url: &str, client_cert: bool, token: Option<&str>, extra: &[&str]) -> String {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(dir.join("ca.pem"));
    if client_cert {
        cmd.arg("--cert").arg(dir.join("client.pem"));
        cmd.arg("--key").arg(dir.join("client.key"));
    }
    if let Some(token) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    cmd.args(extra).arg(url);
    let out = cmd.output().expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn mutual_tls_binds_tokens_to_client_certificates() {
    for_each_backend_raw(|backend| {
        let pki = Pki::new();
        let client_ca = pki.path("ca.pem");
        let server = Server::start_tls_with(backend, pki, &[("RENKEI_CLIENT_CA", &client_ca)]);
        let dir = &server.pki().expect("TLS server").dir;
        let base = server.url("/Patient");
        assert!(base.starts_with("https://"), "{base}");
        let fp = fingerprint(dir);
        let bound = server.token_for(
            "mtls-ehr",
            "Organization/clinic-x",
            "facility",
            &["--cert-fingerprint", &fp],
        );
        let plain = server.token_for("plain-ehr", "Organization/clinic-y", "facility", &[]);
        assert_eq!(
            status(dir, &base, true, Some(&bound), &[]),
            "200",
            "bound token with its certificate"
        );
        assert_eq!(
            status(dir, &base, false, Some(&bound), &[]),
            "401",
            "bound token without the certificate"
        );
        assert_eq!(
            status(dir, &base, false, Some(&plain), &[]),
            "200",
            "unbound token without a certificate"
        );
        assert_eq!(
            status(dir, &base, true, Some(&plain), &[]),
            "401",
            "a presented certificate must match the client's registration"
        );
        assert_eq!(status(dir, &base, false, None, &[]), "401", "no token");
        // TLS 1.2 is the minimum: a TLS 1.1 client cannot connect at all.
        assert_eq!(
            status(
                dir,
                &server.url("/metadata"),
                false,
                None,
                &["--tls-max", "1.1"]
            ),
            "000"
        );
        assert_eq!(
            status(
                dir,
                &server.url("/metadata"),
                false,
                None,
                &["--tlsv1.2", "--tls-max", "1.2"]
            ),
            "200"
        );
    });
}

/// The three scenarios of the primer (new patient at clinic B, referral with continued
/// viewing, discharge to clinic C and withdrawal), with real tokens over HTTPS: the harness's
/// own client verifies the server certificate against the test CA.
#[test]
fn consent_scenarios_over_https() {
    for_each_backend_tls(|s| {
        assert!(s.base.starts_with("https://"), "{}", s.base);
        // The certificate is verified: a client that does not trust the test CA is refused.
        let stranger = reqwest::blocking::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let refused = stranger.get(s.url("metadata")).send();
        assert!(refused.is_err(), "{refused:?}");
        three_scenarios(s);
    });
}

/// A certificate-bound token holds only while the client's CURRENT registration names that
/// certificate: re-registering the client with another fingerprint, or none, ends it (within
/// the server's one-second refresh of registrations).
#[test]
fn bound_tokens_end_when_the_registered_certificate_changes() {
    for_each_backend_raw(|backend| {
        let pki = Pki::new();
        let client_ca = pki.path("ca.pem");
        let server = Server::start_tls_with(backend, pki, &[("RENKEI_CLIENT_CA", &client_ca)]);
        let dir = &server.pki().expect("TLS server").dir;
        let base = server.url("/Patient");
        let fp = fingerprint(dir);
        let register = |extra: &[&str]| {
            let mut args = vec![
                "client",
                "add",
                "--id",
                "rotating-ehr",
                "--organization",
                "Organization/clinic-r",
            ];
            args.extend_from_slice(extra);
            server.cli(&args);
            std::thread::sleep(std::time::Duration::from_millis(1_100));
        };
        let bound = server.token_for(
            "rotating-ehr",
            "Organization/clinic-r",
            "facility",
            &["--cert-fingerprint", &fp],
        );
        assert_eq!(status(dir, &base, true, Some(&bound), &[]), "200");
        // Another certificate registered: the old token over the old certificate is refused.
        register(&["--cert-fingerprint", &"ab".repeat(32)]);
        assert_eq!(
            status(dir, &base, true, Some(&bound), &[]),
            "401",
            "token bound to a certificate the registration no longer names"
        );
        // No certificate registered any more: refused as well.
        register(&[]);
        assert_eq!(status(dir, &base, true, Some(&bound), &[]), "401");
        assert_eq!(status(dir, &base, false, Some(&bound), &[]), "401");
        // Registered again with it: a new token works.
        register(&["--cert-fingerprint", &fp]);
        let fresh = server.issue_token("rotating-ehr", &[]);
        assert_eq!(status(dir, &base, true, Some(&fresh), &[]), "200");
    });
}
