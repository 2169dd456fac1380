//! HTTPS and mutual TLS: TLS 1.2 minimum, certificate-bound tokens. Certificates are made per
//! test with the `openssl` command; requests go through `curl` (both Debian packages).

use crate::support::{for_each_backend_raw, Server};
use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (openssl and curl are needed): {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate signed by the CA.
fn make_pki(dir: &Path) {
    let sh = |script: &str| run(Command::new("sh").arg("-c").arg(script).current_dir(dir));
    sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 2 -subj '/CN=Renkei Test CA' 2>/dev/null");
    sh("openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key -out server.csr -subj '/CN=localhost' 2>/dev/null");
    sh("printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > server.ext");
    sh("openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile server.ext 2>/dev/null");
    sh("openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout client.key -out client.csr -subj '/CN=clinic-ehr' 2>/dev/null");
    sh("printf 'basicConstraints=CA:FALSE\\nextendedKeyUsage=clientAuth\\n' > client.ext");
    sh("openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2 -extfile client.ext 2>/dev/null");
}

fn fingerprint(dir: &Path) -> String {
    let out = run(Command::new("sh")
        .arg("-c")
        .arg("openssl x509 -in client.pem -outform DER | sha256sum")
        .current_dir(dir));
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
        let dir: PathBuf =
            std::env::temp_dir().join(format!("renkei-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        make_pki(&dir);
        let path = |name: &str| dir.join(name).display().to_string();
        let server = Server::start_with(
            backend,
            &[
                ("RENKEI_TLS_CERT", &path("server.pem")),
                ("RENKEI_TLS_KEY", &path("server.key")),
                ("RENKEI_CLIENT_CA", &path("ca.pem")),
            ],
        );
        let base = server.url("/Patient");
        assert!(base.starts_with("https://"), "{base}");
        let fp = fingerprint(&dir);
        let bound = server.token_for(
            "mtls-ehr",
            "Organization/clinic-x",
            "facility",
            &["--cert-fingerprint", &fp],
        );
        let plain = server.token_for("plain-ehr", "Organization/clinic-y", "facility", &[]);
        assert_eq!(
            status(&dir, &base, true, Some(&bound), &[]),
            "200",
            "bound token with its certificate"
        );
        assert_eq!(
            status(&dir, &base, false, Some(&bound), &[]),
            "401",
            "bound token without the certificate"
        );
        assert_eq!(
            status(&dir, &base, false, Some(&plain), &[]),
            "200",
            "unbound token without a certificate"
        );
        assert_eq!(
            status(&dir, &base, true, Some(&plain), &[]),
            "401",
            "a presented certificate must match the client's registration"
        );
        assert_eq!(status(&dir, &base, false, None, &[]), "401", "no token");
        // TLS 1.2 is the minimum: a TLS 1.1 client cannot connect at all.
        assert_eq!(
            status(
                &dir,
                &server.url("/metadata"),
                false,
                None,
                &["--tls-max", "1.1"]
            ),
            "000"
        );
        assert_eq!(
            status(
                &dir,
                &server.url("/metadata"),
                false,
                None,
                &["--tlsv1.2", "--tls-max", "1.2"]
            ),
            "200"
        );
        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
    });
}
