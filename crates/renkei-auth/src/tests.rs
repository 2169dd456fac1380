#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::collections::HashSet;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;

use crate::*;

const TOKEN_URL: &str = "https://renkei.example/auth/token";

fn t0() -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000, 0).single().unwrap()
}

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + secs, 0).single().unwrap()
}

fn facility() -> ClientRegistration {
    let mut c = ClientRegistration::new("clinic-a", "Organization/clinic-a");
    c.scopes = vec!["system/*.rs".into(), "system/Observation.cruds".into()];
    c
}

fn client_with_key() -> (ClientRegistration, String, String) {
    let (pem, jwks) = generate_client_key_es384(Some("k1")).unwrap();
    let mut c = facility();
    c.jwks = Some(jwks);
    (c, pem, "k1".to_string())
}

fn never_seen(_: &str) -> bool {
    false
}

// ---------------------------------------------------------------- scopes

#[test]
fn scope_parsing_table() {
    let ok = [
        ("system/*.rs", "system/*.rs"),
        ("system/*.cruds", "system/*.cruds"),
        ("user/Observation.rs", "user/Observation.rs"),
        ("patient/*.read", "patient/*.rs"),
        ("patient/Patient.write", "patient/Patient.cud"),
        ("system/*.*", "system/*.cruds"),
        ("user/Encounter.c", "user/Encounter.c"),
        ("system/Condition.ds", "system/Condition.ds"),
    ];
    for (input, canonical) in ok {
        let s: Scope = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(s.to_string(), canonical, "{input}");
    }
    let bad = [
        "",
        "system",
        "system/*",
        "system/*.",
        "system/*.sr", // out of order
        "system/*.rr", // repeated
        "system/*.x",
        "admin/*.rs",
        "System/*.rs",
        "system/observation.rs",
        "system/Obs-ervation.rs",
        "openid",
        "launch/patient",
        "patient/Observation.rs?category=laboratory",
        "system/*.readwrite",
        "system//*.rs",
    ];
    for input in bad {
        assert!(
            input.parse::<Scope>().is_err(),
            "{input:?} should be invalid"
        );
    }
}

#[test]
fn invalid_scopes_are_named() {
    let err = Scopes::parse("system/*.rs openid patient/*.zz").unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidScope);
    assert!(err.description.contains("'openid'"), "{}", err.description);
    assert!(
        err.description.contains("'patient/*.zz'"),
        "{}",
        err.description
    );
    assert!(!err.description.contains("system/*.rs"));
    // A type R4 does not define is refused rather than granted (a review found
    // `system/Bogus.rs` issued).
    let err = Scopes::parse("system/Patient.rs system/Bogus.rs").unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidScope);
    assert!(err.description.contains("Bogus"), "{}", err.description);
}

#[test]
fn scopes_allow() {
    let s = Scopes::parse("system/*.rs user/Observation.cu patient/Patient.r").unwrap();
    assert!(s.allows("Condition", Action::Read));
    assert!(s.allows("Condition", Action::Search));
    assert!(!s.allows("Condition", Action::Create));
    assert!(s.allows("Observation", Action::Create));
    assert!(s.allows("Observation", Action::Update));
    assert!(!s.allows("Observation", Action::Delete));
    assert!(s.allows_in(ScopeContext::User, "Observation", Action::Create));
    assert!(!s.allows_in(ScopeContext::User, "Observation", Action::Read));
    assert!(s.allows_in(ScopeContext::Patient, "Patient", Action::Read));
    assert!(!s.allows_in(ScopeContext::Patient, "Patient", Action::Search));
    let none = Scopes::parse("").unwrap();
    assert!(none.is_empty());
    assert!(!none.allows("Patient", Action::Read));
}

#[test]
fn duplicate_scopes_merge() {
    let s =
        Scopes::parse("system/Observation.r system/Observation.s system/Observation.r").unwrap();
    assert_eq!(s.to_string(), "system/Observation.rs");
    assert_eq!(s.len(), 1);
}

#[test]
fn scope_grant_intersection() {
    let registered = Scopes::parse("system/*.rs system/Observation.cruds").unwrap();
    let grant = |req: &str| registered.grant(&Scopes::parse(req).unwrap());
    assert_eq!(
        grant("system/Patient.r").unwrap().to_string(),
        "system/Patient.r"
    );
    assert_eq!(
        grant("system/*.rs").unwrap().to_string(),
        "system/*.rs system/Observation.rs"
    );
    // wildcard request narrowed by registered scopes
    assert_eq!(
        grant("system/*.cruds").unwrap().to_string(),
        "system/*.rs system/Observation.cruds"
    );
    // partially covered: narrowed to the overlap
    assert_eq!(
        grant("system/Condition.rds").unwrap().to_string(),
        "system/Condition.rs"
    );
    // nothing in common: refused, named
    let e = grant("system/Condition.d").unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidScope);
    assert!(e.description.contains("system/Condition.d"));
    let e = grant("user/Observation.rs").unwrap_err();
    assert!(e.description.contains("user/Observation.rs"));
    // one bad among good ones still fails
    assert!(grant("system/Patient.rs patient/*.rs").is_err());
}

#[test]
fn scopes_serde_as_string() {
    let s = Scopes::parse("patient/*.read user/Observation.rs").unwrap();
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(v, json!("patient/*.rs user/Observation.rs"));
    let back: Scopes = serde_json::from_value(v).unwrap();
    assert_eq!(back, s);
    assert!(serde_json::from_value::<Scopes>(json!("nope")).is_err());
}

// ---------------------------------------------------------------- registration

#[test]
fn registration_serde_and_defaults() {
    let c: ClientRegistration = serde_json::from_value(json!({
        "client_id": "clinic-a",
        "organization": "Organization/clinic-a",
    }))
    .unwrap();
    assert_eq!(c.role, Role::Facility);
    assert_eq!(c.effective_purposes(), vec!["TREAT"]);
    assert!(c.jwks.is_none() && !c.break_glass);

    let mut c = facility();
    c.break_glass = true;
    c.role = Role::Auditor;
    c.cert_fingerprint = Some("ab".repeat(32));
    let text = serde_json::to_string(&c).unwrap();
    assert!(text.contains("\"role\":\"auditor\""));
    let back: ClientRegistration = serde_json::from_str(&text).unwrap();
    assert_eq!(back, c);
    assert_eq!(back.effective_purposes(), vec!["TREAT", "ETREAT"]);

    // ETREAT only with break-glass
    let mut c = facility();
    c.purposes = vec!["TREAT".into(), "ETREAT".into(), "HPAYMT".into()];
    assert_eq!(c.effective_purposes(), vec!["TREAT", "HPAYMT"]);
}

#[test]
fn registration_validation() {
    let (c, _, _) = client_with_key();
    c.validate().unwrap();
    let mut bad = c.clone();
    bad.organization = "clinic-a".into();
    assert_eq!(bad.validate().unwrap_err().code, ErrorCode::InvalidRequest);
    let mut bad = c.clone();
    bad.scopes = vec!["system/*.rs".into(), "nonsense".into()];
    assert_eq!(bad.validate().unwrap_err().code, ErrorCode::InvalidScope);
    let mut bad = c.clone();
    bad.role = Role::Patient;
    assert!(bad.validate().is_err());
    bad.patient = Some("Patient/p1".into());
    // A patient app reads its own record: patient/ scopes with r and s only.
    for scopes in [
        vec!["system/*.rs"],
        vec!["patient/*.rs", "user/Observation.rs"],
        vec!["patient/Observation.cruds"],
        vec!["patient/*.c"],
    ] {
        bad.scopes = scopes.iter().map(|s| s.to_string()).collect();
        let refused = bad.validate().unwrap_err();
        assert_eq!(refused.code, ErrorCode::InvalidScope, "{scopes:?}");
        assert!(refused.description.contains("patient-role"), "{refused:?}");
    }
    bad.scopes = vec!["patient/*.rs".into(), "patient/Observation.r".into()];
    bad.validate().unwrap();
    let mut bad = c.clone();
    bad.cert_fingerprint = Some("xyz".into());
    assert!(bad.validate().is_err());
    let mut bad = c.clone();
    bad.jwks = Some(json!({"keys": [{"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}]}));
    assert!(bad.validate().is_err());
    // A JWKS holding the client's private key (its `d`) is refused: the gateway must not hold it.
    let mut bad = c.clone();
    if let Some(key) = bad.jwks.as_mut().and_then(|jwks| jwks["keys"].get_mut(0)) {
        key["d"] = json!("c2VjcmV0");
    }
    let refused = bad.validate().unwrap_err();
    assert!(refused.description.contains("private key"), "{refused:?}");
    let mut bad = c;
    bad.client_id = "has space".into();
    assert!(bad.validate().is_err());
    assert_eq!("Administrator".parse::<Role>().unwrap(), Role::Admin);
}

#[test]
fn contradictory_registrations_are_refused() {
    let (c, _, _) = client_with_key();
    let mut facility_with_patient = c.clone();
    facility_with_patient.patient = Some("Patient/p1".into());
    assert!(facility_with_patient
        .validate()
        .unwrap_err()
        .description
        .contains("only a patient-role client"));
    let mut patient_breaking_glass = c.clone();
    patient_breaking_glass.role = Role::Patient;
    patient_breaking_glass.patient = Some("Patient/p1".into());
    patient_breaking_glass.scopes = vec!["patient/*.rs".into()];
    patient_breaking_glass.validate().unwrap();
    patient_breaking_glass.break_glass = true;
    assert!(patient_breaking_glass.validate().is_err());
    let mut auditor_as_practitioner = c;
    auditor_as_practitioner.role = Role::Auditor;
    auditor_as_practitioner.practitioner = Some("Practitioner/d1".into());
    assert!(auditor_as_practitioner.validate().is_err());
}

/// A certificate-bound token is granted only while the registration names that certificate.
#[test]
fn still_grants_follows_the_registered_certificate() {
    let key = ServerKey::generate();
    let (mut c, _, _) = client_with_key();
    c.cert_fingerprint = Some(cert_fingerprint(b"first certificate"));
    let (token, _) = issue_access_token(&key, &c, None, None, 60, t0()).unwrap();
    let claims = verify_access_token(&key, &token, t0()).unwrap();
    assert!(c.still_grants(&claims));
    let mut rotated = c.clone();
    rotated.cert_fingerprint = Some(cert_fingerprint(b"second certificate"));
    assert!(!rotated.still_grants(&claims));
    let mut unbound = c.clone();
    unbound.cert_fingerprint = None;
    assert!(!unbound.still_grants(&claims));
    // The same fingerprint spelt as operators paste it still grants.
    let mut colons = c.clone();
    colons.cert_fingerprint = Some(
        cert_fingerprint(b"first certificate")
            .to_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect::<Vec<_>>()
            .join(":"),
    );
    assert!(colons.still_grants(&claims));
    // And an unbound token is not granted by a registration that now names a certificate.
    let (plain, _) = issue_access_token(&key, &unbound, None, None, 60, t0()).unwrap();
    let plain = verify_access_token(&key, &plain, t0()).unwrap();
    assert!(unbound.still_grants(&plain));
    assert!(!c.still_grants(&plain));
}

/// The audience comes from the endpoint's list only; an empty list accepts nothing.
#[test]
fn assertion_audience_is_one_of_the_configured_urls() {
    let key = ServerKey::generate();
    let (client, pem, kid) = client_with_key();
    let lookup = move |_: &str| Some(client.clone());
    let form = |a: &str| {
        vec![
            ("grant_type".to_string(), "client_credentials".to_string()),
            (
                "client_assertion_type".to_string(),
                CLIENT_ASSERTION_TYPE.to_string(),
            ),
            ("client_assertion".to_string(), a.to_string()),
        ]
    };
    let other = "http://localhost:8080/auth/token";
    for (urls, aud, ok) in [
        (&[TOKEN_URL, other][..], other, true),
        (&[TOKEN_URL][..], "https://evil.example/auth/token", false),
        (&[][..], TOKEN_URL, false),
    ] {
        let endpoint = TokenEndpoint {
            key: &key,
            token_urls: urls,
            ttl_seconds: 60,
            now: t0(),
            client_cert_der: None,
        };
        let a = sign_client_assertion(&pem, &kid, "clinic-a", aud, t0()).unwrap();
        let f = form(&a);
        let r = endpoint.handle(
            f.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            &lookup,
            &|_, _| false,
        );
        assert_eq!(r.is_ok(), ok, "{urls:?} {aud}");
    }
}

/// The replay callback is asked about (client, jti): two clients with the same jti are two
/// different assertions.
#[test]
fn replay_check_is_per_client() {
    let key = ServerKey::generate();
    let (a, pem_a, kid) = client_with_key();
    let (mut b, pem_b, _) = client_with_key();
    b.client_id = "clinic-b".into();
    let lookup = move |id: &str| {
        [a.clone(), b.clone()]
            .into_iter()
            .find(|c| c.client_id == id)
    };
    let seen = RefCell::new(HashSet::new());
    let check = |client: &str, jti: &str| {
        !seen
            .borrow_mut()
            .insert((client.to_string(), jti.to_string()))
    };
    let endpoint = TokenEndpoint {
        key: &key,
        token_urls: &[TOKEN_URL],
        ttl_seconds: 60,
        now: t0(),
        client_cert_der: None,
    };
    let signed = |pem: &str, client: &str| {
        sign_jwt_with(
            pem,
            &kid,
            &json!({"iss": client, "sub": client, "aud": TOKEN_URL,
                    "exp": t0().timestamp() + 60, "jti": "same"}),
        )
        .unwrap()
    };
    let run = |assertion: &str| {
        let form = [
            ("grant_type", "client_credentials"),
            ("client_assertion_type", CLIENT_ASSERTION_TYPE),
            ("client_assertion", assertion),
        ];
        endpoint.handle(form, &lookup, &check)
    };
    assert!(run(&signed(&pem_a, "clinic-a")).is_ok());
    assert!(run(&signed(&pem_b, "clinic-b")).is_ok());
    assert_eq!(
        run(&signed(&pem_b, "clinic-b")).unwrap_err().code,
        ErrorCode::InvalidClient
    );
}

#[test]
fn fingerprints() {
    let der = b"not really a certificate";
    let fp = cert_fingerprint(der);
    assert_eq!(fp.len(), 64);
    let colon = fp
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap().to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    assert_eq!(normalize_fingerprint(&colon).unwrap(), fp);
    let mut c = facility();
    assert!(!c.matches_certificate(der));
    c.cert_fingerprint = Some(colon);
    assert!(c.matches_certificate(der));
    assert!(!c.matches_certificate(b"other"));
}

// ---------------------------------------------------------------- server key

#[test]
fn server_key_persistence_round_trips() {
    let key = ServerKey::generate();
    let pem = key.to_pkcs8_pem().unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let from_pem = ServerKey::from_pem(&pem).unwrap();
    assert_eq!(from_pem.kid(), key.kid());
    let jwk = key.to_jwk_json();
    let from_jwk = ServerKey::from_jwk_json(&jwk).unwrap();
    assert_eq!(from_jwk.kid(), key.kid());
    // a token from the original verifies with the reloaded keys
    let (token, _) = issue_access_token(&key, &facility(), None, None, 300, t0()).unwrap();
    verify_access_token(&from_pem, &token, t0()).unwrap();
    verify_access_token(&from_jwk, &token, t0()).unwrap();

    let jwks = key.public_jwks();
    let k = &jwks["keys"][0];
    assert_eq!(k["kty"], "EC");
    assert_eq!(k["crv"], "P-384");
    assert_eq!(k["alg"], "ES384");
    assert_eq!(k["kid"], key.kid());
    assert!(k.get("d").is_none());
    assert!(!format!("{key:?}").contains(&from_jwk.to_jwk_json()));

    assert!(ServerKey::from_pem("garbage").is_err());
    assert!(ServerKey::from_jwk_json("{}").is_err());
    assert!(ServerKey::from_jwk_json(&jwks["keys"][0].to_string()).is_err());
    let mut tampered: serde_json::Value = serde_json::from_str(&jwk).unwrap();
    tampered["x"] = ServerKey::generate().public_jwk()["x"].clone();
    assert!(ServerKey::from_jwk_json(&tampered.to_string()).is_err());
    // a P-256 key is refused for the server
    let p256 = {
        use p256::pkcs8::EncodePrivateKey;
        p256::SecretKey::random(&mut rand_core::OsRng)
            .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
            .unwrap()
            .to_string()
    };
    assert!(ServerKey::from_pem(&p256).is_err());
}

// ---------------------------------------------------------------- access tokens

#[test]
fn a_token_holds_only_while_its_registration_still_grants_it() {
    let key = ServerKey::generate();
    let mut client = facility();
    client.break_glass = true;
    let (token, _) = issue_access_token(
        &key,
        &client,
        Some("system/Observation.rs"),
        None,
        600,
        t0(),
    )
    .unwrap();
    let claims = verify_access_token(&key, &token, at(10)).unwrap();
    assert!(client.still_grants(&claims));
    // Broader registered scopes still cover it; a narrower registration does not.
    let mut changed = client.clone();
    changed.scopes = vec!["system/*.cruds".into()];
    assert!(changed.still_grants(&claims));
    changed.scopes = vec!["system/Patient.rs".into()];
    assert!(!changed.still_grants(&claims));
    let mut changed = client.clone();
    changed.break_glass = false;
    assert!(!changed.still_grants(&claims));
    let mut changed = client.clone();
    changed.organization = "Organization/elsewhere".into();
    assert!(!changed.still_grants(&claims));
    let mut changed = client.clone();
    changed.client_id = "someone-else".into();
    assert!(!changed.still_grants(&claims));
}

#[test]
fn access_token_round_trip() {
    let key = ServerKey::generate();
    let mut client = facility();
    client.break_glass = true;
    let (token, granted) = issue_access_token(
        &key,
        &client,
        Some("system/Observation.rs system/Patient.r"),
        Some("Practitioner/dr-who"),
        600,
        t0(),
    )
    .unwrap();
    assert_eq!(
        granted.to_string(),
        "system/Observation.rs system/Patient.r"
    );
    let claims = verify_access_token(&key, &token, at(10)).unwrap();
    assert_eq!(claims.iss, "renkei");
    assert_eq!(claims.sub, "clinic-a");
    assert_eq!(claims.client_id(), "clinic-a");
    assert_eq!(claims.aud, "renkei");
    assert_eq!(claims.iat, t0().timestamp());
    assert_eq!(claims.exp, t0().timestamp() + 600);
    assert_eq!(claims.organization, "Organization/clinic-a");
    assert_eq!(claims.role, Role::Facility);
    assert_eq!(claims.fhir_user.as_deref(), Some("Practitioner/dr-who"));
    assert_eq!(claims.scope, granted);
    assert!(claims.scope.allows("Observation", Action::Search));
    assert!(!claims.scope.allows("Condition", Action::Read));
    assert!(claims.break_glass);
    assert!(claims.allows_purpose("ETREAT"));
    assert!(claims.cnf.is_none());
    uuid::Uuid::parse_str(&claims.jti).unwrap();
    // the full cryptographic path agrees with the cache
    assert_eq!(
        verify_access_token_uncached(&key, &token, at(10)).unwrap(),
        claims
    );

    // wire shape
    let payload = token.split('.').nth(1).unwrap();
    let raw: serde_json::Value = serde_json::from_slice(&B64URL.decode(payload).unwrap()).unwrap();
    assert_eq!(raw["scope"], "system/Observation.rs system/Patient.r");
    assert_eq!(raw["fhirUser"], "Practitioner/dr-who");
    assert_eq!(raw["purposes"], json!(["TREAT", "ETREAT"]));
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES384);
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(header.kid.as_deref(), Some(key.kid()));

    // jti unique
    let (t2, _) = issue_access_token(&key, &client, None, None, 600, t0()).unwrap();
    let c2 = verify_access_token(&key, &t2, t0()).unwrap();
    assert_ne!(c2.jti, claims.jti);
    assert_eq!(c2.scope.to_string(), "system/*.rs system/Observation.cruds");
}

#[test]
fn access_token_patient_and_practitioner_rules() {
    let key = ServerKey::generate();
    let mut p = ClientRegistration::new("portal", "Organization/clinic-a");
    p.role = Role::Patient;
    p.patient = Some("Patient/p1".into());
    p.scopes = vec!["patient/*.rs".into()];
    let (token, _) = issue_access_token(&key, &p, None, None, 60, t0()).unwrap();
    let claims = verify_access_token(&key, &token, t0()).unwrap();
    assert_eq!(claims.role, Role::Patient);
    assert_eq!(claims.patient.as_deref(), Some("Patient/p1"));

    // patient/ scopes without a patient
    let mut np = facility();
    np.scopes = vec!["patient/*.rs".into()];
    assert_eq!(
        issue_access_token(&key, &np, None, None, 60, t0())
            .unwrap_err()
            .code,
        ErrorCode::InvalidScope
    );

    // fixed practitioner
    let mut fixed = facility();
    fixed.practitioner = Some("Practitioner/a".into());
    let (token, _) = issue_access_token(&key, &fixed, None, None, 60, t0()).unwrap();
    assert_eq!(
        verify_access_token(&key, &token, t0())
            .unwrap()
            .fhir_user
            .as_deref(),
        Some("Practitioner/a")
    );
    assert!(issue_access_token(&key, &fixed, None, Some("Practitioner/b"), 60, t0()).is_err());
    assert!(issue_access_token(&key, &facility(), None, Some("Patient/x"), 60, t0()).is_err());
    // ttl limits
    assert!(issue_access_token(&key, &facility(), None, None, 0, t0()).is_err());
    assert!(issue_access_token(
        &key,
        &facility(),
        None,
        None,
        MAX_TOKEN_TTL_SECONDS + 1,
        t0()
    )
    .is_err());
    // no scopes at all
    let empty = ClientRegistration::new("x", "Organization/x");
    assert_eq!(
        issue_access_token(&key, &empty, None, None, 60, t0())
            .unwrap_err()
            .code,
        ErrorCode::InvalidScope
    );
}

#[test]
fn requesting_unregistered_scope_is_invalid_scope() {
    let key = ServerKey::generate();
    let e = issue_access_token(
        &key,
        &facility(),
        Some("system/Patient.cud"),
        None,
        60,
        t0(),
    )
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidScope);
    assert!(e.description.contains("system/Patient.cud"));
    let e = issue_access_token(&key, &facility(), Some("system/*.rs bogus"), None, 60, t0())
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidScope);
    assert!(e.description.contains("bogus"));
    // blank scope = everything registered
    let (_, g) = issue_access_token(&key, &facility(), Some("  "), None, 60, t0()).unwrap();
    assert_eq!(g.to_string(), "system/*.rs system/Observation.cruds");
}

#[test]
fn access_token_expiry() {
    let key = ServerKey::generate();
    let (token, _) = issue_access_token(&key, &facility(), None, None, 60, t0()).unwrap();
    verify_access_token(&key, &token, at(60)).unwrap();
    verify_access_token(&key, &token, at(60 + ACCESS_TOKEN_LEEWAY_SECONDS)).unwrap();
    let e = verify_access_token(&key, &token, at(61 + ACCESS_TOKEN_LEEWAY_SECONDS)).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidToken);
    assert_eq!(e.http_status(), 401);
    assert!(e.description.contains("expired"));
    // also via the uncached path, and from the cache after a fresh key
    let key2 = ServerKey::generate();
    let (t2, _) = issue_access_token(&key2, &facility(), None, None, 60, t0()).unwrap();
    assert!(verify_access_token_uncached(&key2, &t2, at(120)).is_err());
    // issued in the future
    assert!(verify_access_token(&key2, &t2, at(-60)).is_err());
}

#[test]
fn access_token_wrong_key_or_audience() {
    let key = ServerKey::generate();
    let other = ServerKey::generate();
    let (token, _) = issue_access_token(&key, &facility(), None, None, 60, t0()).unwrap();
    assert_eq!(
        verify_access_token(&other, &token, t0()).unwrap_err().code,
        ErrorCode::InvalidToken
    );

    // same kid but different key material: signature check must fail
    let pem = key.to_pkcs8_pem().unwrap();
    let same = ServerKey::from_pem(&pem)
        .unwrap()
        .with_audience("https://fhir.example/r4");
    let e = verify_access_token(&same, &token, t0()).unwrap_err();
    assert!(e.description.contains("audience"), "{e}");
    let (tok_aud, _) = issue_access_token(&same, &facility(), None, None, 60, t0()).unwrap();
    assert_eq!(
        verify_access_token(&same, &tok_aud, t0()).unwrap().aud,
        "https://fhir.example/r4"
    );
    assert!(verify_access_token(&key, &tok_aud, t0()).is_err());
}

fn forge(header: serde_json::Value, payload: &serde_json::Value, sig: &str) -> String {
    format!(
        "{}.{}.{}",
        B64URL.encode(header.to_string()),
        B64URL.encode(payload.to_string()),
        sig
    )
}

#[test]
fn access_token_rejects_alg_none_hs256_and_tampering() {
    let key = ServerKey::generate();
    let mut client = facility();
    client.scopes = vec!["system/Patient.r".into()];
    let (token, _) = issue_access_token(&key, &client, None, None, 60, t0()).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let mut payload: serde_json::Value =
        serde_json::from_slice(&B64URL.decode(parts[1]).unwrap()).unwrap();

    // alg none (with and without signature)
    for sig in ["", parts[2]] {
        let t = forge(
            json!({"alg": "none", "typ": "at+jwt", "kid": key.kid()}),
            &payload,
            sig,
        );
        assert_eq!(
            verify_access_token(&key, &t, t0()).unwrap_err().code,
            ErrorCode::InvalidToken
        );
    }
    // HS256 keyed with the public key (classic key confusion)
    let public = key.public_jwk().to_string();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some(key.kid().to_string());
    h.typ = Some("at+jwt".into());
    let hs = jsonwebtoken::encode(
        &h,
        &payload,
        &jsonwebtoken::EncodingKey::from_secret(public.as_bytes()),
    )
    .unwrap();
    assert!(verify_access_token(&key, &hs, t0()).is_err());

    // tampered payload: widen the scope, keep the signature
    payload["scope"] = json!("system/*.cruds");
    let t = format!(
        "{}.{}.{}",
        parts[0],
        B64URL.encode(payload.to_string()),
        parts[2]
    );
    let e = verify_access_token(&key, &t, t0()).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidToken);
    // tampered header typ
    let t = forge(
        json!({"alg": "ES384", "typ": "JWT", "kid": key.kid()}),
        &payload,
        parts[2],
    );
    assert!(verify_access_token(&key, &t, t0()).is_err());
    // flipped signature byte
    let mut sig = B64URL.decode(parts[2]).unwrap();
    sig[10] ^= 1;
    let t = format!("{}.{}.{}", parts[0], parts[1], B64URL.encode(sig));
    assert!(verify_access_token(&key, &t, t0()).is_err());
    // the genuine token still works (and tampered ones did not poison the cache)
    verify_access_token(&key, &token, t0()).unwrap();
}

#[test]
fn access_token_garbage_never_panics() {
    let key = ServerKey::generate();
    let (token, _) = issue_access_token(&key, &facility(), None, None, 60, t0()).unwrap();
    let mut inputs: Vec<String> = vec![
        "".into(),
        ".".into(),
        "..".into(),
        "a.b.c".into(),
        "a.b.c.d".into(),
        "€.€.€".into(),
        "x".repeat(MAX_TOKEN_LEN + 1),
        format!("{}.", token),
        token.replace('.', ""),
        forge(json!([]), &json!({}), ""),
        forge(json!({"alg": "ES384"}), &json!(null), "AAAA"),
        forge(
            json!({"alg": "ES384", "typ": "at+jwt", "kid": key.kid()}),
            &json!({"exp": "x"}),
            "AAAA",
        ),
        forge(
            json!({"alg": "ES384", "typ": "at+jwt", "kid": key.kid()}),
            &json!({}),
            &"A".repeat(128),
        ),
    ];
    // every truncation of a real token
    for i in 0..token.len() {
        if token.is_char_boundary(i) {
            inputs.push(token[..i].to_string());
        }
    }
    for input in &inputs {
        let e = verify_access_token(&key, input, t0()).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidToken, "{input:?}");
        let _ = assertion_client_id(input);
        let (c, _, _) = client_with_key();
        let _ = verify_client_assertion(input, &c, TOKEN_URL, t0(), &never_seen);
    }
}

#[test]
fn mutated_tokens_and_assertions_are_refused_without_panic() {
    let key = ServerKey::generate();
    let (client, pem, kid) = client_with_key();
    let (token, _) = issue_access_token(&key, &facility(), None, None, 60, t0()).unwrap();
    let assertion = sign_client_assertion(&pem, &kid, "clinic-a", TOKEN_URL, t0()).unwrap();
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ";
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..300 {
        let original = if round % 2 == 0 { &token } else { &assertion };
        let mut bytes = original.as_bytes().to_vec();
        for _ in 0..(1 + next() % 3) {
            let i = (next() % bytes.len() as u64) as usize;
            bytes[i] = alphabet[(next() % alphabet.len() as u64) as usize];
        }
        let mutated = String::from_utf8(bytes).unwrap();
        if &mutated == original {
            continue;
        }
        // Base64 has slack bits: a mutated last character may decode to the same bytes.
        let same_bytes = |a: &str, b: &str| {
            a.split('.').zip(b.split('.')).all(|(x, y)| {
                B64URL
                    .decode(x)
                    .ok()
                    .is_some_and(|x| B64URL.decode(y).ok() == Some(x))
            }) && a.split('.').count() == b.split('.').count()
        };
        if round % 2 == 0 {
            let r = verify_access_token_uncached(&key, &mutated, t0());
            assert!(r.is_err() || same_bytes(&mutated, original), "{mutated}");
        } else {
            let r = verify_client_assertion(&mutated, &client, TOKEN_URL, t0(), &never_seen);
            assert!(r.is_err() || same_bytes(&mutated, original), "{mutated}");
        }
    }
}

#[test]
fn certificate_bound_tokens() {
    let key = ServerKey::generate();
    let der = b"client certificate DER";
    let mut client = facility();
    client.cert_fingerprint = Some(cert_fingerprint(der));
    let (token, _) = issue_access_token(&key, &client, None, None, 60, t0()).unwrap();
    let claims = verify_access_token(&key, &token, t0()).unwrap();
    let cnf = claims.cnf.as_ref().unwrap();
    assert_eq!(cnf.x5t_s256, B64URL.encode(sha2::Sha256::digest(der)));
    claims.check_certificate(Some(der)).unwrap();
    assert!(claims.check_certificate(Some(b"other")).is_err());
    assert!(claims.check_certificate(None).is_err());
    let (plain, _) = issue_access_token(&key, &facility(), None, None, 60, t0()).unwrap();
    let plain = verify_access_token(&key, &plain, t0()).unwrap();
    plain.check_certificate(None).unwrap();
    plain.check_certificate(Some(der)).unwrap();
}
use sha2::Digest as _;

#[test]
fn verified_cache_is_exact_and_time_checked() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ServerKey>();
    let key = ServerKey::generate();
    let (token, _) = issue_access_token(&key, &facility(), None, None, 60, t0()).unwrap();
    let cached = verify_access_token(&key, &token, t0()).unwrap();
    key.clear_verified_cache();
    let fresh = verify_access_token(&key, &token, t0()).unwrap(); // full path, refills
    assert_eq!(cached, fresh);
    assert!(verify_access_token(&key, &token, at(3600)).is_err()); // cache honours exp
                                                                   // a prefix/suffix of a cached token is not a cache hit
    assert!(verify_access_token(&key, &format!("{token}x"), t0()).is_err());
    assert!(verify_access_token(&key, &token[..token.len() - 1], t0()).is_err());
    // filling the cache past capacity keeps working
    for i in 0..(crate::keys::VERIFIED_CACHE_CAPACITY + 10) {
        let claims = verify_access_token(&key, &token, t0()).unwrap();
        let mut other = claims.clone();
        other.jti = i.to_string();
        crate::access::remember_for_test(&key, &format!("fake-{i}"), &other, t0().timestamp());
    }
    assert!(key.verified.lock().unwrap().len() <= crate::keys::VERIFIED_CACHE_CAPACITY);
    verify_access_token(&key, &token, t0()).unwrap();
}

// ---------------------------------------------------------------- client assertions

#[test]
fn client_assertion_happy_path_es384() {
    let (client, pem, kid) = client_with_key();
    let a = sign_client_assertion(&pem, &kid, "clinic-a", TOKEN_URL, t0()).unwrap();
    assert_eq!(assertion_client_id(&a).unwrap(), "clinic-a");
    let seen = RefCell::new(HashSet::new());
    let check = |jti: &str| !seen.borrow_mut().insert(jti.to_string());
    let v = verify_client_assertion(&a, &client, TOKEN_URL, at(5), &check).unwrap();
    assert_eq!(v.client_id, "clinic-a");
    assert_eq!(v.exp, t0().timestamp() + 300);
    assert!(seen.borrow().contains(&v.jti));
    // replayed
    let e = verify_client_assertion(&a, &client, TOKEN_URL, at(6), &check).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidClient);
    assert_eq!(e.http_status(), 401);
    assert!(e.description.contains("replayed"));
    // a fresh one is fine
    let b = sign_client_assertion(&pem, &kid, "clinic-a", TOKEN_URL, t0()).unwrap();
    verify_client_assertion(&b, &client, TOKEN_URL, at(6), &check).unwrap();
}

/// Two keys under one `kid`: only the first could ever verify, so a rotation to the second
/// failed silently (a review found it registered).
#[test]
fn a_jwks_with_a_repeated_kid_is_refused() {
    let (mut client, _, _) = client_with_key();
    let key = client.jwks.as_ref().unwrap()["keys"][0].clone();
    client.jwks = Some(json!({"keys": [key.clone(), key]}));
    let refused = client.validate().unwrap_err().to_string();
    assert!(refused.contains("kid"), "{refused}");
}

#[test]
fn client_assertion_private_jwk_and_es256() {
    // private JWK (P-384) built from the PEM
    let (client, pem, kid) = client_with_key();
    let secret = {
        use p384::pkcs8::DecodePrivateKey;
        p384::SecretKey::from_pkcs8_pem(&pem).unwrap()
    };
    let mut jwk = client.jwks.as_ref().unwrap()["keys"][0].clone();
    jwk["d"] = json!(B64URL.encode(secret.to_bytes()));
    let a = sign_client_assertion(&jwk.to_string(), &kid, "clinic-a", TOKEN_URL, t0()).unwrap();
    verify_client_assertion(&a, &client, TOKEN_URL, t0(), &never_seen).unwrap();

    // ES256 key registered without alg
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use p256::pkcs8::EncodePrivateKey;
    let k = p256::SecretKey::random(&mut rand_core::OsRng);
    let pt = k.public_key().to_encoded_point(false);
    let mut c = facility();
    c.jwks = Some(json!({"keys": [
        {"kty": "EC", "crv": "P-256", "kid": "p256",
         "x": B64URL.encode(pt.x().unwrap()), "y": B64URL.encode(pt.y().unwrap())}
    ]}));
    c.validate().unwrap();
    let pem256 = k
        .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
        .unwrap()
        .to_string();
    let a = sign_client_assertion(&pem256, "p256", "clinic-a", TOKEN_URL, t0()).unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(&a).unwrap().alg,
        jsonwebtoken::Algorithm::ES256
    );
    verify_client_assertion(&a, &c, TOKEN_URL, t0(), &never_seen).unwrap();
}

#[test]
fn client_assertion_rs384() {
    use rsa::traits::PublicKeyParts;
    let private = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).unwrap();
    let pem = {
        use rsa::pkcs8::EncodePrivateKey;
        private
            .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap()
            .to_string()
    };
    let mut c = facility();
    c.jwks = Some(json!({"keys": [{
        "kty": "RSA", "kid": "rsa-1", "alg": "RS384", "use": "sig",
        "n": B64URL.encode(private.n().to_bytes_be()),
        "e": B64URL.encode(private.e().to_bytes_be()),
    }]}));
    c.validate().unwrap();
    let a = sign_client_assertion(&pem, "rsa-1", "clinic-a", TOKEN_URL, t0()).unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(&a).unwrap().alg,
        jsonwebtoken::Algorithm::RS384
    );
    verify_client_assertion(&a, &c, TOKEN_URL, t0(), &never_seen).unwrap();
    // the same RSA key used with an HS384 "signature" over its public key is refused
    let claims = json!({"iss": "clinic-a", "sub": "clinic-a", "aud": TOKEN_URL,
        "exp": t0().timestamp() + 60, "jti": "x"});
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS384);
    h.kid = Some("rsa-1".into());
    let hs =
        jsonwebtoken::encode(&h, &claims, &jsonwebtoken::EncodingKey::from_secret(b"k")).unwrap();
    let e = verify_client_assertion(&hs, &c, TOKEN_URL, t0(), &never_seen).unwrap_err();
    assert!(e.description.contains("not accepted"), "{e}");
    // too-small RSA keys are refused at registration
    let small = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 1024).unwrap();
    let mut s = facility();
    s.jwks = Some(json!({"keys": [{"kty": "RSA", "kid": "small",
        "n": B64URL.encode(small.n().to_bytes_be()), "e": "AQAB"}]}));
    assert!(s.validate().is_err());
}

fn claims_now(extra: serde_json::Value) -> serde_json::Value {
    let mut c = json!({
        "iss": "clinic-a", "sub": "clinic-a", "aud": TOKEN_URL,
        "exp": t0().timestamp() + 240, "iat": t0().timestamp(), "jti": uuid::Uuid::new_v4().to_string(),
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

#[test]
fn client_assertion_claim_checks() {
    let (client, pem, kid) = client_with_key();
    let check = |extra: serde_json::Value| {
        let a = sign_jwt_with(&pem, &kid, &claims_now(extra)).unwrap();
        verify_client_assertion(&a, &client, TOKEN_URL, t0(), &never_seen)
    };
    check(json!({})).unwrap();
    check(json!({"aud": ["https://other", TOKEN_URL]})).unwrap();
    check(json!({"exp": t0().timestamp() as f64 + 100.5})).unwrap();
    let cases = [
        (json!({"aud": "https://renkei.example/other"}), "aud"),
        (json!({"aud": null}), "aud"),
        (json!({"aud": 5}), "aud"),
        (json!({"iss": "clinic-b"}), "iss"),
        (json!({"sub": "clinic-b"}), "sub"),
        (json!({"sub": null}), "sub"),
        (json!({"exp": null}), "exp"),
        (json!({"exp": "tomorrow"}), "exp"),
        (
            json!({"exp": t0().timestamp() - ASSERTION_CLOCK_SKEW_SECONDS - 1}),
            "expired",
        ),
        (json!({"exp": t0().timestamp() + 3600}), "five minutes"),
        (json!({"nbf": t0().timestamp() + 600}), "nbf"),
        (json!({"iat": t0().timestamp() + 600}), "iat"),
        (json!({"jti": null}), "jti"),
        (json!({"jti": ""}), "jti"),
        (json!({"jti": 7}), "jti"),
    ];
    for (extra, needle) in cases {
        let e = check(extra.clone()).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidClient, "{extra}");
        assert!(e.description.contains(needle), "{extra}: {e}");
    }
}

#[test]
fn client_assertion_expired_and_wrong_aud() {
    let (client, pem, kid) = client_with_key();
    let a = sign_client_assertion(&pem, &kid, "clinic-a", TOKEN_URL, t0()).unwrap();
    let e = verify_client_assertion(
        &a,
        &client,
        TOKEN_URL,
        at(300 + ASSERTION_CLOCK_SKEW_SECONDS + 1),
        &never_seen,
    )
    .unwrap_err();
    assert!(e.description.contains("expired"));
    let e = verify_client_assertion(&a, &client, "https://evil.example/token", t0(), &never_seen)
        .unwrap_err();
    assert!(e.description.contains("aud"));
}

#[test]
fn client_assertion_key_selection() {
    let (client, pem, _) = client_with_key();
    // kid mismatch
    let a = sign_client_assertion(&pem, "k2", "clinic-a", TOKEN_URL, t0()).unwrap();
    let e = verify_client_assertion(&a, &client, TOKEN_URL, t0(), &never_seen).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidClient);
    assert!(e.description.contains("k2"), "{e}");
    // right kid, wrong key (attacker's own key under the victim's kid)
    let (attacker_pem, _) = generate_client_key_es384(Some("k1")).unwrap();
    let a = sign_client_assertion(&attacker_pem, "k1", "clinic-a", TOKEN_URL, t0()).unwrap();
    let e = verify_client_assertion(&a, &client, TOKEN_URL, t0(), &never_seen).unwrap_err();
    assert!(e.description.contains("signature"), "{e}");
    // no kid
    let claims = claims_now(json!({}));
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES384);
    h.kid = None;
    let secret = {
        use p384::pkcs8::{DecodePrivateKey, EncodePrivateKey};
        p384::SecretKey::from_pkcs8_pem(&pem)
            .unwrap()
            .to_pkcs8_der()
            .unwrap()
    };
    let no_kid = jsonwebtoken::encode(
        &h,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_der(secret.as_bytes()),
    )
    .unwrap();
    assert!(
        verify_client_assertion(&no_kid, &client, TOKEN_URL, t0(), &never_seen)
            .unwrap_err()
            .description
            .contains("kid")
    );
    // ES384-signed but the JWK says ES256 / key is P-384 but header claims ES256
    let mut c2 = client.clone();
    c2.jwks.as_mut().unwrap()["keys"][0]["alg"] = json!("RS384");
    let a = sign_client_assertion(&pem, "k1", "clinic-a", TOKEN_URL, t0()).unwrap();
    assert!(verify_client_assertion(&a, &c2, TOKEN_URL, t0(), &never_seen).is_err());
    // encryption keys are ignored
    let mut c3 = client.clone();
    c3.jwks.as_mut().unwrap()["keys"][0]["use"] = json!("enc");
    assert!(verify_client_assertion(&a, &c3, TOKEN_URL, t0(), &never_seen).is_err());
    // no JWKS
    let mut c4 = client.clone();
    c4.jwks = None;
    assert!(verify_client_assertion(&a, &c4, TOKEN_URL, t0(), &never_seen).is_err());
    // alg none
    let none = forge(json!({"alg": "none", "kid": "k1"}), &claims, "");
    assert!(verify_client_assertion(&none, &client, TOKEN_URL, t0(), &never_seen).is_err());
    // replay check is not consulted for a failing assertion
    let consulted = RefCell::new(false);
    let spy = |_: &str| {
        *consulted.borrow_mut() = true;
        false
    };
    let bad = sign_client_assertion(&pem, "k1", "clinic-a", "https://other/token", t0()).unwrap();
    assert!(verify_client_assertion(&bad, &client, TOKEN_URL, t0(), &spy).is_err());
    assert!(!*consulted.borrow());
}

#[test]
fn assertion_client_id_requires_iss_eq_sub() {
    let (_, pem, kid) = client_with_key();
    let a = sign_jwt_with(&pem, &kid, &claims_now(json!({"sub": "other"}))).unwrap();
    assert!(assertion_client_id(&a).is_err());
    assert!(assertion_client_id("not a jwt").is_err());
}

// ---------------------------------------------------------------- token endpoint

#[test]
fn token_endpoint_full_exchange() {
    let key = ServerKey::generate();
    let (client, pem, kid) = client_with_key();
    let registered = client.clone();
    let lookup = move |id: &str| (id == "clinic-a").then(|| registered.clone());
    let seen = RefCell::new(HashSet::new());
    let check = |client: &str, jti: &str| {
        !seen
            .borrow_mut()
            .insert((client.to_string(), jti.to_string()))
    };
    let endpoint = TokenEndpoint {
        key: &key,
        token_urls: &[TOKEN_URL],
        ttl_seconds: 300,
        now: t0(),
        client_cert_der: None,
    };
    let a = sign_client_assertion(&pem, &kid, "clinic-a", TOKEN_URL, t0()).unwrap();
    let form = [
        ("grant_type", "client_credentials"),
        ("client_assertion_type", CLIENT_ASSERTION_TYPE),
        ("client_assertion", a.as_str()),
        ("scope", "system/Observation.rs"),
    ];
    let grant = endpoint.handle(form, &lookup, &check).unwrap();
    let r = &grant.response;
    assert_eq!(r["token_type"], "bearer");
    assert_eq!(r["expires_in"], 300);
    assert_eq!(r["scope"], "system/Observation.rs");
    let claims = verify_access_token(&key, r["access_token"].as_str().unwrap(), t0()).unwrap();
    assert_eq!(claims.sub, "clinic-a");
    assert_eq!(grant.assertion.client_id, "clinic-a");
    // replay of the same assertion
    let e = endpoint.handle(form, &lookup, &check).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidClient);
    assert_eq!(e.to_json()["error"], "invalid_client");

    let a2 = sign_client_assertion(&pem, &kid, "clinic-a", TOKEN_URL, t0()).unwrap();
    let run = |pairs: Vec<(&str, &str)>| endpoint.handle(pairs, &lookup, &|_, _| false);
    let base = vec![
        ("grant_type", "client_credentials"),
        ("client_assertion_type", CLIENT_ASSERTION_TYPE),
        ("client_assertion", a2.as_str()),
    ];
    // no scope: everything registered
    assert_eq!(
        run(base.clone()).unwrap().response["scope"],
        "system/*.rs system/Observation.cruds"
    );
    let mut p = base.clone();
    p.push(("scope", "system/Patient.d"));
    assert_eq!(run(p).unwrap_err().code, ErrorCode::InvalidScope);
    let mut p = base.clone();
    p[0] = ("grant_type", "authorization_code");
    assert_eq!(run(p).unwrap_err().code, ErrorCode::UnsupportedGrantType);
    let mut p = base.clone();
    p.remove(0);
    assert_eq!(run(p).unwrap_err().code, ErrorCode::InvalidRequest);
    let mut p = base.clone();
    p[1] = ("client_assertion_type", "urn:other");
    assert_eq!(run(p).unwrap_err().code, ErrorCode::InvalidRequest);
    let mut p = base.clone();
    p.remove(2);
    assert_eq!(run(p).unwrap_err().code, ErrorCode::InvalidClient);
    let mut p = base.clone();
    p.push(("grant_type", "client_credentials"));
    assert_eq!(run(p).unwrap_err().code, ErrorCode::InvalidRequest);
    // client_id, when sent, names the assertion's client (RFC 7521 §4.2)
    let mut p = base.clone();
    p.push(("client_id", "clinic-a"));
    assert!(run(p).is_ok());
    let mut p = base.clone();
    p.push(("client_id", "hospital-b"));
    assert_eq!(run(p).unwrap_err().code, ErrorCode::InvalidClient);
    // unknown client
    let (other_pem, _) = generate_client_key_es384(Some("z")).unwrap();
    let stranger = sign_client_assertion(&other_pem, "z", "stranger", TOKEN_URL, t0()).unwrap();
    let mut p = base.clone();
    p[2] = ("client_assertion", stranger.as_str());
    let e = run(p).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidClient);
    // Answered as a registered client without that key: no client id can be probed.
    assert!(
        e.description.contains("no key with kid 'z'"),
        "{}",
        e.description
    );
}

#[test]
fn token_endpoint_mtls_binding() {
    let key = ServerKey::generate();
    let (mut client, pem, kid) = client_with_key();
    let der: &[u8] = b"the registered certificate";
    client.cert_fingerprint = Some(cert_fingerprint(der));
    let lookup = move |_: &str| Some(client.clone());
    let form = |a: &str| {
        vec![
            ("grant_type".to_string(), "client_credentials".to_string()),
            (
                "client_assertion_type".to_string(),
                CLIENT_ASSERTION_TYPE.to_string(),
            ),
            ("client_assertion".to_string(), a.to_string()),
        ]
    };
    for (cert, ok) in [
        (Some(der), true),
        (Some(&b"another"[..]), false),
        (None, false),
    ] {
        let endpoint = TokenEndpoint {
            key: &key,
            token_urls: &[TOKEN_URL],
            ttl_seconds: 60,
            now: t0(),
            client_cert_der: cert,
        };
        let a = sign_client_assertion(&pem, &kid, "clinic-a", TOKEN_URL, t0()).unwrap();
        let f = form(&a);
        let r = endpoint.handle(
            f.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            &lookup,
            &|_, _| false,
        );
        assert_eq!(r.is_ok(), ok, "{cert:?}");
        if let Ok(g) = r {
            let claims =
                verify_access_token(&key, g.response["access_token"].as_str().unwrap(), t0())
                    .unwrap();
            claims.check_certificate(Some(der)).unwrap();
        }
    }
}

#[test]
fn smart_configuration_document() {
    let doc = smart_configuration("https://renkei.example/fhir", "/auth/token");
    assert_eq!(
        doc["token_endpoint"],
        "https://renkei.example/fhir/auth/token"
    );
    assert_eq!(
        doc["token_endpoint_auth_methods_supported"],
        json!(["private_key_jwt"])
    );
    assert_eq!(doc["grant_types_supported"], json!(["client_credentials"]));
    assert_eq!(
        doc["capabilities"],
        json!(["client-confidential-asymmetric", "permission-v2"])
    );
    assert_eq!(
        doc["token_endpoint_auth_signing_alg_values_supported"],
        json!(["ES384", "RS384", "ES256", "RS256"])
    );
    assert!(doc.get("jwks_uri").is_none());
    let doc = smart_configuration_with_jwks("https://x", TOKEN_URL, "https://x/auth/jwks");
    assert_eq!(doc["token_endpoint"], TOKEN_URL);
    assert_eq!(doc["jwks_uri"], "https://x/auth/jwks");
    for s in doc["scopes_supported"].as_array().unwrap() {
        s.as_str().unwrap().parse::<Scope>().unwrap();
    }
    let resp = token_endpoint_response("tok", &Scopes::parse("system/*.rs").unwrap(), 300);
    assert_eq!(
        resp,
        json!({"access_token": "tok", "token_type": "bearer", "expires_in": 300, "scope": "system/*.rs"})
    );
}

#[test]
fn error_helpers() {
    let e = AuthError::new(ErrorCode::InvalidToken, "token \"expired\"\n");
    assert_eq!(e.to_string(), "invalid_token: token \"expired\"\n");
    let h = e.www_authenticate("renkei");
    assert_eq!(
        h,
        "Bearer realm=\"renkei\", error=\"invalid_token\", error_description=\"token _expired__\""
    );
    assert_eq!(
        www_authenticate_missing("renkei"),
        "Bearer realm=\"renkei\""
    );
    assert_eq!(ErrorCode::InsufficientScope.http_status(), 403);
    assert_eq!(ErrorCode::InvalidScope.http_status(), 400);
}

// ---------------------------------------------------------------- speed

/// CPU time of this thread (Linux `/proc/thread-self/stat`, clock ticks of
/// 10 ms), so the figures hold up when other work loads the machine.
fn thread_cpu() -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(std::time::Duration::from_millis(ticks * 10))
}

fn measure(n: u32, mut f: impl FnMut()) -> (std::time::Duration, Option<std::time::Duration>) {
    let cpu0 = thread_cpu();
    let start = std::time::Instant::now();
    for _ in 0..n {
        f();
    }
    let wall = start.elapsed() / n;
    let cpu = match (cpu0, thread_cpu()) {
        (Some(a), Some(b)) => Some((b - a) / n),
        _ => None,
    };
    (wall, cpu)
}

/// `cargo test --release -p renkei-auth -- --ignored --nocapture verify_latency`
#[test]
#[ignore]
fn verify_latency() {
    let key = ServerKey::generate();
    let (token, _) = issue_access_token(&key, &facility(), None, None, 3600, t0()).unwrap();
    let cold = measure(3000, || {
        verify_access_token_uncached(&key, &token, t0()).unwrap();
    });
    verify_access_token(&key, &token, t0()).unwrap();
    let warm = measure(1_000_000, || {
        verify_access_token(&key, &token, t0()).unwrap();
    });
    let issue = measure(500, || {
        issue_access_token(&key, &facility(), None, None, 3600, t0()).unwrap();
    });
    println!("per call (wall, thread CPU):");
    println!(
        "  ES384 verify, full (uncached): {:?}, {:?}",
        cold.0, cold.1
    );
    println!(
        "  verify, token seen before:     {:?}, {:?}",
        warm.0, warm.1
    );
    println!(
        "  issue:                         {:?}, {:?}",
        issue.0, issue.1
    );
}
