//! Regression tests of the authentication review: who chooses the assertion audience, replay
//! ids per client, `Authorization` at the token endpoint, UTF-8 break-glass reasons,
//! settings refused at start-up and contradictory client registrations.

use crate::support::{
    for_each_backend, for_each_backend_raw, for_each_backend_with, renkei_command, Database, Server,
};
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::{Duration, Instant};

const ASSERTION_TYPE: &str = "urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer";

/// Registers `client_id` (facility of `organization`) with a fresh ES384 key; returns the
/// private key PEM (kid `k1`).
pub(crate) fn register_with_key(s: &Server, client_id: &str, organization: &str) -> String {
    let (private_pem, jwks) = renkei_auth::generate_client_key_es384(Some("k1")).expect("key");
    let path = std::env::temp_dir().join(format!(
        "renkei-jwks-{}.json",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&path, jwks.to_string()).expect("write jwks");
    s.cli(&[
        "client",
        "add",
        "--id",
        client_id,
        "--organization",
        organization,
        "--scope",
        "system/Patient.rs",
        "--jwks",
        &path.display().to_string(),
    ]);
    let _ = std::fs::remove_file(&path);
    private_pem
}

pub(crate) fn assertion(pem: &str, client_id: &str, aud: &str, jti: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    renkei_auth::sign_jwt_with(
        pem,
        "k1",
        &json!({"iss": client_id, "sub": client_id, "aud": aud, "exp": now + 120, "iat": now, "jti": jti}),
    )
    .expect("assertion")
}

/// POSTs a client-credentials request to the server's own `/auth/token` with extra headers.
pub(crate) fn ask(
    s: &Server,
    assertion: &str,
    headers: &[(&str, &str)],
) -> reqwest::blocking::Response {
    let url = s.base.trim_end_matches("/fhir").to_string() + "/auth/token";
    let mut request = s
        .anonymous_client
        .post(url)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=client_credentials&client_assertion_type={ASSERTION_TYPE}&client_assertion={assertion}"
        ));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().expect("token request")
}

fn smart_configuration(s: &Server, headers: &[(&str, &str)]) -> Value {
    let mut request = s
        .anonymous_client
        .get(s.url("/.well-known/smart-configuration"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().expect("smart-configuration");
    assert_eq!(response.status().as_u16(), 200);
    response.json().expect("json")
}

/// With `base_url` configured, the token endpoint derived from it is the only audience an
/// assertion may name and the only one advertised, whatever `Host` the caller sends.
#[test]
fn configured_base_url_is_the_only_assertion_audience() {
    for_each_backend_with(
        &[("RENKEI_BASE_URL", "https://gateway.example/fhir")],
        |s| {
            let pem = register_with_key(s, "aud-ehr", "Organization/clinic-aud");
            let official = "https://gateway.example/auth/token";
            for headers in [
                &[][..],
                &[("Host", "evil.example")][..],
                &[
                    ("X-Forwarded-Host", "evil.example"),
                    ("X-Forwarded-Proto", "https"),
                ][..],
            ] {
                let config = smart_configuration(s, headers);
                assert_eq!(config["token_endpoint"], official, "{headers:?}: {config}");
            }
            // An assertion made out to another server, sent with that server's Host: refused.
            let evil = assertion(&pem, "aud-ehr", "https://evil.example/auth/token", "j-evil");
            let refused = ask(s, &evil, &[("Host", "evil.example")]);
            assert_eq!(refused.status().as_u16(), 401);
            let body: Value = refused.json().expect("json");
            assert_eq!(body["error"], "invalid_client", "{body}");
            let forwarded = assertion(&pem, "aud-ehr", "https://evil.example/auth/token", "j-fwd");
            let refused = ask(
                s,
                &forwarded,
                &[
                    ("X-Forwarded-Host", "evil.example"),
                    ("X-Forwarded-Proto", "https"),
                ],
            );
            assert_eq!(refused.status().as_u16(), 401);
            // Nor is the listen address an audience once base_url says where clients reach us.
            let local_url = s.base.trim_end_matches("/fhir").to_string() + "/auth/token";
            let local = assertion(&pem, "aud-ehr", &local_url, "j-local");
            assert_eq!(ask(s, &local, &[]).status().as_u16(), 401);
            // The configured endpoint is accepted, whatever Host carried it.
            let good = assertion(&pem, "aud-ehr", official, "j-good");
            assert_eq!(
                ask(s, &good, &[("Host", "evil.example")]).status().as_u16(),
                200
            );
        },
    );
}

/// Without `base_url`, the audience is the listen address's token endpoint (127.0.0.1 also
/// spelt localhost); a Host header cannot name another.
#[test]
fn without_base_url_the_listen_address_is_the_audience() {
    for_each_backend(|s| {
        let pem = register_with_key(s, "aud-local", "Organization/clinic-aud");
        let own = s.base.trim_end_matches("/fhir").to_string() + "/auth/token";
        let config = smart_configuration(s, &[("Host", "evil.example")]);
        assert_eq!(config["token_endpoint"], own.as_str(), "{config}");
        let evil = assertion(&pem, "aud-local", "http://evil.example/auth/token", "e1");
        assert_eq!(
            ask(s, &evil, &[("Host", "evil.example")]).status().as_u16(),
            401
        );
        let localhost = own.replace("127.0.0.1", "localhost");
        let good = assertion(&pem, "aud-local", &localhost, "l1");
        assert_eq!(ask(s, &good, &[]).status().as_u16(), 200);
        let good = assertion(&pem, "aud-local", &own, "l2");
        assert_eq!(ask(s, &good, &[]).status().as_u16(), 200);
    });
}

/// Assertion ids are unique per client: B may use an id A used; each client's replay is
/// still refused.
#[test]
fn assertion_replay_is_tracked_per_client() {
    for_each_backend(|s| {
        let own = s.base.trim_end_matches("/fhir").to_string() + "/auth/token";
        let pem_a = register_with_key(s, "jti-a", "Organization/clinic-a");
        let pem_b = register_with_key(s, "jti-b", "Organization/clinic-b");
        let a = assertion(&pem_a, "jti-a", &own, "shared-id");
        assert_eq!(ask(s, &a, &[]).status().as_u16(), 200);
        let b = assertion(&pem_b, "jti-b", &own, "shared-id");
        assert_eq!(
            ask(s, &b, &[]).status().as_u16(),
            200,
            "another client's jti"
        );
        let again = assertion(&pem_b, "jti-b", &own, "shared-id");
        assert_eq!(
            ask(s, &again, &[]).status().as_u16(),
            401,
            "replay by the same client"
        );
    });
}

/// RFC 6749: a 401 to a client that authenticated with `Authorization` names its scheme
/// (§5.2); an `Authorization` header and a client assertion together are refused (§2.3).
#[test]
fn authorization_header_at_the_token_endpoint() {
    for_each_backend(|s| {
        let own = s.base.trim_end_matches("/fhir").to_string() + "/auth/token";
        let pem = register_with_key(s, "basic-ehr", "Organization/clinic-b");
        let basic = ("Authorization", "Basic YmFzaWMtZWhyOnNlY3JldA==");
        let response = s
            .anonymous_client
            .post(&own)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header(basic.0, basic.1)
            .body("grant_type=client_credentials")
            .send()
            .expect("token request");
        assert_eq!(response.status().as_u16(), 401);
        let challenge = response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(
            challenge.starts_with("Basic "),
            "WWW-Authenticate: {challenge:?}"
        );
        let body: Value = response.json().expect("json");
        assert_eq!(body["error"], "invalid_client", "{body}");
        // Its refused Login event names the client the credential claimed, not `anonymous`.
        let auditor = s.token_for("auditor-basic", "Organization/x", "auditor", &[]);
        let logins = s
            .with_token(&auditor)
            .get("AuditEvent?type=110114&agent=basic-ehr&outcome=4")
            .expect(200)
            .json();
        assert_eq!(
            logins["entry"].as_array().map(Vec::len),
            Some(1),
            "{logins}"
        );

        let both = assertion(&pem, "basic-ehr", &own, "both-1");
        let refused = ask(s, &both, &[basic]);
        assert_eq!(refused.status().as_u16(), 400);
        let body: Value = refused.json().expect("json");
        assert_eq!(body["error"], "invalid_request", "{body}");
        // The same assertion alone was not consumed by the refused request.
        assert_eq!(ask(s, &both, &[]).status().as_u16(), 200);
    });
}

/// A break-glass reason in raw UTF-8 is a reason (not a missing header); percent-encoded
/// still works; bytes that are not UTF-8 are a 400 saying so.
#[test]
fn break_glass_reason_in_utf8() {
    for_each_backend(|s| {
        let er = s.token_for("er-utf8", "Organization/er", "facility", &["--break-glass"]);
        let send = |reason: reqwest::header::HeaderValue| {
            // Break-glass applies to one patient's data, so the search names one.
            s.anonymous_client
                .get(s.url("Patient?_id=utf8-probe"))
                .bearer_auth(&er)
                .header("X-Purpose-Of-Use", "ETREAT")
                .header("X-Break-Glass-Reason", reason)
                .send()
                .expect("request")
        };
        let raw = reqwest::header::HeaderValue::from_bytes("意識不明".as_bytes()).expect("bytes");
        let r = send(raw);
        assert_eq!(r.status().as_u16(), 200, "{}", r.text().unwrap_or_default());
        let encoded =
            reqwest::header::HeaderValue::from_static("%E6%84%8F%E8%AD%98%E4%B8%8D%E6%98%8E");
        assert_eq!(send(encoded).status().as_u16(), 200);
        let latin1 =
            reqwest::header::HeaderValue::from_bytes(b"inconsciente \xe9tat").expect("bytes");
        let r = send(latin1);
        assert_eq!(r.status().as_u16(), 400);
        let text = r.text().unwrap_or_default();
        assert!(text.contains("UTF-8"), "{text}");
    });
}

/// Runs `renkei serve` on a fresh database with `env`; it must exit (not serve) with an
/// error naming `expected`.
fn refused_at_start(env: &[(&str, &str)], expected: &str) {
    for_each_backend_raw(|backend| {
        let db = Database::new(backend);
        let mut child = renkei_command()
            .args(["serve", "--listen", "127.0.0.1:0", "--database", &db.url])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn renkei");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("renkei serve with {env:?} did not refuse to start");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            use std::io::Read;
            let _ = pipe.read_to_string(&mut stderr);
        }
        assert!(!status.success(), "{env:?}: {stderr}");
        assert!(stderr.contains(expected), "{env:?}: {stderr}");
    });
}

#[test]
fn token_lifetime_outside_one_day_is_refused_at_start() {
    refused_at_start(
        &[("RENKEI_TOKEN_TTL_SECONDS", "86401")],
        "token_ttl_seconds",
    );
    refused_at_start(&[("RENKEI_TOKEN_TTL_SECONDS", "0")], "token_ttl_seconds");
}

#[test]
fn the_database_wait_is_bounded() {
    for wait in ["0", "301"] {
        refused_at_start(
            &[("RENKEI_DATABASE_WAIT_SECONDS", wait)],
            "database_wait_seconds",
        );
    }
}

#[test]
fn boolean_settings_are_true_or_false() {
    for spelling in ["TRUE", "1", "yes", ""] {
        refused_at_start(
            &[("RENKEI_PATIENT_DENY_HOLDS_ON_BREAK_GLASS", spelling)],
            "RENKEI_PATIENT_DENY_HOLDS_ON_BREAK_GLASS",
        );
    }
    // Naming the variable (a review found only `--demo` named).
    for spelling in ["yes", "TRUE"] {
        refused_at_start(&[("RENKEI_DEMO", spelling)], "RENKEI_DEMO");
    }
}

#[test]
fn base_url_must_be_absolute() {
    refused_at_start(&[("RENKEI_BASE_URL", "gateway.example/fhir")], "base_url");
}

/// Runs the CLI against `s`'s database; it must fail with a message containing `expected`.
fn cli_refuses(s: &Server, args: &[&str], expected: &str) {
    let out = renkei_command()
        .args(args)
        .args(["--database", s.database_url()])
        .stdin(Stdio::null())
        .output()
        .expect("run renkei");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "renkei {args:?} succeeded");
    assert!(stderr.contains(expected), "renkei {args:?}: {stderr}");
}

/// Contradictory registrations and token requests are refused by the CLI.
#[test]
fn contradictory_client_registrations_are_refused() {
    for_each_backend(|s| {
        fn add<'a>(extra: &[&'a str]) -> Vec<&'a str> {
            let mut args = vec![
                "client",
                "add",
                "--id",
                "odd",
                "--organization",
                "Organization/o1",
            ];
            args.extend_from_slice(extra);
            args
        }
        cli_refuses(
            s,
            &add(&["--patient", "Patient/p1"]),
            "only a patient-role client",
        );
        cli_refuses(
            s,
            &add(&[
                "--role",
                "patient",
                "--patient",
                "Patient/p1",
                "--break-glass",
            ]),
            "only a facility client may break the glass",
        );
        cli_refuses(
            s,
            &add(&["--role", "auditor", "--break-glass"]),
            "only a facility client may break the glass",
        );
        cli_refuses(
            s,
            &add(&[
                "--role",
                "patient",
                "--patient",
                "Patient/p1",
                "--practitioner",
                "Practitioner/d1",
            ]),
            "only a facility client acts for a practitioner",
        );
        // A client registered without a practitioner gets no practitioner at token time.
        s.cli(&[
            "client",
            "add",
            "--id",
            "plain",
            "--organization",
            "Organization/o1",
        ]);
        cli_refuses(
            s,
            &[
                "token",
                "--client-id",
                "plain",
                "--practitioner",
                "Practitioner/elsewhere",
            ],
            "registered without a practitioner",
        );
        // A registered practitioner is what the token acts for; another is refused.
        s.cli(&[
            "client",
            "add",
            "--id",
            "dr",
            "--organization",
            "Organization/o1",
            "--practitioner",
            "Practitioner/d1",
        ]);
        s.issue_token("dr", &["--practitioner", "Practitioner/d1"]);
        cli_refuses(
            s,
            &[
                "token",
                "--client-id",
                "dr",
                "--practitioner",
                "Practitioner/d2",
            ],
            "registered to act as Practitioner/d1",
        );
        // An organization that is not stored is registered, with a warning.
        let out = renkei_command()
            .args([
                "client",
                "add",
                "--id",
                "typo",
                "--organization",
                "Organization/nowhere",
            ])
            .args(["--database", s.database_url()])
            .stdin(Stdio::null())
            .output()
            .expect("run renkei");
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("Organization/nowhere is not stored"));
    });
}

/// The token request's form is read as UTF-8, as every body is: a `charset` naming another
/// encoding is refused with 415 and the OAuth error `invalid_request` (it had not been
/// checked), `utf8` is taken like `UTF-8`.
#[test]
fn token_requests_are_utf8() {
    for_each_backend(|s| {
        let own = s.base.trim_end_matches("/fhir").to_string() + "/auth/token";
        let pem = register_with_key(s, "charset-ehr", "Organization/clinic-c");
        let post = |content_type: &str, jti: &str| {
            let assertion = assertion(&pem, "charset-ehr", &own, jti);
            s.anonymous_client
                .post(&own)
                .header("Content-Type", content_type)
                .body(format!(
                    "grant_type=client_credentials&client_assertion_type={ASSERTION_TYPE}&client_assertion={assertion}"
                ))
                .send()
                .expect("token request")
        };
        for (jti, content_type) in [
            (
                "c1",
                "application/x-www-form-urlencoded; charset=iso-8859-1",
            ),
            ("c2", "application/x-www-form-urlencoded;charset=\"utf-16\""),
            // Not a form at all (a review found text/plain read as one).
            ("c2b", "text/plain"),
            ("c2c", "application/json"),
        ] {
            let response = post(content_type, jti);
            assert_eq!(response.status().as_u16(), 415, "{content_type}");
            let error: Value = response.json().expect("json");
            assert_eq!(error["error"], "invalid_request", "{error}");
            assert!(
                error["error_description"]
                    .as_str()
                    .is_some_and(|d| d.contains("charset") || d.contains("form")),
                "{error}"
            );
        }
        for (jti, content_type) in [
            ("c3", "application/x-www-form-urlencoded; charset=utf8"),
            ("c4", "application/x-www-form-urlencoded; charset=UTF-8"),
            ("c5", "application/x-www-form-urlencoded"),
        ] {
            let response = post(content_type, jti);
            assert_eq!(response.status().as_u16(), 200, "{content_type}");
        }
    });
}
